"""Imported at the start of every Python process the tests start (conftest puts this
folder on ``PYTHONPATH``): one CPU program, one persistent compilation cache key, on
every process of a multi-process run.

JAX keys its persistent compilation cache by, among others, the devices' topology
fingerprint. On a TPU slice that fingerprint is the slice's, the same on every host, so
every host finds what process 0 wrote. On the CPU backend it differs from process to
process (``xla_client.get_topology_for_devices(jax.devices()).fingerprint()``, jax
0.10), so in the suite's 2-process runs process 1 never hit the cache and compiled
every program again while process 0 waited for it in the first collective: a warm tiny
2-process prune run took 23 s (14 s with this hook; tests/README.md, "2026-12-06, late").

Here the CPU backend's key uses the devices' kinds instead, as JAX itself does for
backends without a topology (``cache_key._hash_devices``). The device assignment (global
device ids) stays in the key through the compile options, so programs for different
device sets still get different keys. What a process loads is the program process 0
compiled for the same devices; every multi-process test compares its final state with
a 1-process run's, so a program that did not fit would fail them.

Lazily: jax is not imported here (most processes the tests start never import it); the
patch is applied when ``jax._src.cache_key`` is first imported.
"""

import importlib.abc
import importlib.machinery
import sys

_MODULE = "jax._src.cache_key"


def _patch(module) -> None:
  original = module._hash_accelerator_config

  def hash_accelerator_config(hash_obj, accelerators) -> None:
    if all(device.platform == "cpu" for device in accelerators.flat):
      module._hash_devices(hash_obj, accelerators)
    else:
      original(hash_obj, accelerators)

  module._hash_accelerator_config = hash_accelerator_config


class _PatchOnImport(importlib.abc.MetaPathFinder):
  """Finds ``jax._src.cache_key`` as usual, and patches it once it has run."""

  def find_spec(self, name, path, target=None):
    if name != _MODULE:
      return None
    sys.meta_path.remove(self)
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_and_patch(module) -> None:
      exec_module(module)
      if hasattr(module, "_hash_accelerator_config") and hasattr(module, "_hash_devices"):
        _patch(module)

    spec.loader.exec_module = exec_and_patch
    return spec


if _MODULE not in sys.modules:
  sys.meta_path.insert(0, _PatchOnImport())
