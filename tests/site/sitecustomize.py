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

With ``JAXPRUNE_COMPILE_LOG=<file>`` in the environment, every process also appends one
JSON line per XLA compile to that file (the program, its cache key, the process's CPU
seconds spent in it, and ``PYTEST_CURRENT_TEST``, which the processes a test starts
inherit): ``tests/timing.py --compiles <file>`` sums them per program and per test. That
is how the suite's compile time was found to be 44% of its CPU (tests/README.md,
"2026-12-07").

With ``JAXPRUNE_TEST_STEP_SECONDS=<s>``, a training loop sleeps that long at each step
(in ``PreemptionGuard.requested``, which every step calls): a job that only has to be
running while a test watches it (the launcher's detached job) then idles instead of
taking a core from the rest of the suite.

Every process gets the CLI's garbage collector threshold (``jaxprune.main.quiet_gc``):
young collections every 10,000 allocations instead of 700. The processes that import
jax, torch and transformers outside the CLI (the notebook kernels, the accelerator
check) ran ~1,800-2,150 collections each: 3.6-4.3 CPU-s of the accelerator check's smoke
run and 5.0-5.6 of the sparsebert_glue notebook's, against 1.5-1.7 and 2.7-2.8 with this
(``gc.callbacks``, tests/README.md "session 37"). Only cycles wait longer.

Lazily: neither jax nor jaxprune is imported here (most processes the tests start never
import them); each patch is applied when its module (``jax._src.cache_key``,
``jax._src.compiler``, ``jaxprune.checkpoint``) is first imported.
"""

import gc
import importlib.machinery
import os
import sys
import time


def _patch_cache_key(module) -> None:
  if not (hasattr(module, "_hash_accelerator_config") and hasattr(module, "_hash_devices")):
    return
  original = module._hash_accelerator_config

  def hash_accelerator_config(hash_obj, accelerators) -> None:
    if all(device.platform == "cpu" for device in accelerators.flat):
      module._hash_devices(hash_obj, accelerators)
    else:
      original(hash_obj, accelerators)

  module._hash_accelerator_config = hash_accelerator_config


def _log_compiles(module, log: str) -> None:
  """Wraps ``_compile_and_write_cache``, where JAX compiles a program that its persistent
  cache did not hold, to append what it cost to ``log``."""
  original = getattr(module, "_compile_and_write_cache", None)
  if original is None:
    return

  def compile_and_write_cache(backend, computation, executable_devices, compile_options,
                              host_callbacks, module_name, cache_key):
    wall, cpu = time.monotonic(), time.process_time()
    try:
      return original(backend, computation, executable_devices, compile_options,
                      host_callbacks, module_name, cache_key)
    finally:
      import json  # here: every process the tests start imports this file
      row = {"program": module_name, "key": cache_key[-16:], "pid": os.getpid(),
             "cpu_s": round(time.process_time() - cpu, 3),
             "wall_s": round(time.monotonic() - wall, 3),
             "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]}
      with open(log, "a") as out:  # one short write per line: appends do not interleave
        out.write(json.dumps(row) + "\n")

  module._compile_and_write_cache = compile_and_write_cache


def _slow_steps(module, seconds: float) -> None:
  """Makes ``PreemptionGuard.requested`` (called once per training step) sleep first."""
  guard = getattr(module, "PreemptionGuard", None)
  if guard is None:
    return
  requested = guard.requested

  def slow_requested(self, step):
    time.sleep(seconds)
    return requested(self, step)

  guard.requested = slow_requested


gc.set_threshold(10_000, 10, 10)

_PATCHES = {"jax._src.cache_key": _patch_cache_key}
if os.environ.get("JAXPRUNE_COMPILE_LOG"):
  _PATCHES["jax._src.compiler"] = lambda m: _log_compiles(m, os.environ["JAXPRUNE_COMPILE_LOG"])
if os.environ.get("JAXPRUNE_TEST_STEP_SECONDS"):
  _PATCHES["jaxprune.checkpoint"] = lambda m: _slow_steps(
      m, float(os.environ["JAXPRUNE_TEST_STEP_SECONDS"]))


class _PatchOnImport:  # a meta path finder (importlib.abc cost every process ~25 ms)
  """Finds the modules of ``_PATCHES`` as usual, and patches each once it has run."""

  def find_spec(self, name, path, target=None):
    patch = _PATCHES.pop(name, None)
    if patch is None:
      return None
    if not _PATCHES:
      sys.meta_path.remove(self)
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_and_patch(module) -> None:
      exec_module(module)
      patch(module)

    spec.loader.exec_module = exec_and_patch
    return spec


for _name in [n for n in _PATCHES if n in sys.modules]:  # already imported: too late
  del _PATCHES[_name]
if _PATCHES:
  sys.meta_path.insert(0, _PatchOnImport())
