"""Meshes over devices interleaved by process, as on a TPU slice.

On a real multi-host TPU slice, ``jax.make_mesh`` orders devices by physical topology,
so the ``data`` axis visits hosts interleaved (a v4-16 goes ``0,1,0,1,...``) and each
host holds several separate blocks of every batch. CPU processes on 127.0.0.1 list
their devices in process order, which hides that. With this module installed, 2
processes x 2 devices give the data axis ``[p0, p1, p0, p1]``: process 0 holds rows
``[0, 1, 4, 5]`` of a batch of 8, so the whole placement path (``batch_rows``, the data
iterator's ``rows``, ``make_array_from_process_local_data``) runs for real.

Run the CLI with it: ``python tests/interleaved_devices.py --mode=prune ...`` (the same
flags as ``python -m jaxprune.main``); or call `install` before building a mesh.
"""

import itertools
import sys


def interleave(devices: list) -> list:
  """``devices`` reordered to alternate processes: p0's first, p1's first, p0's second..."""
  by_process: dict[int, list] = {}
  for d in devices:
    by_process.setdefault(d.process_index, []).append(d)
  columns = itertools.zip_longest(*(by_process[p] for p in sorted(by_process)))
  return [d for column in columns for d in column if d is not None]


def install() -> None:
  """Makes ``jaxprune.sharding.make_mesh`` lay out interleaved devices by default.

  Only the project's meshes change: ``jax.devices()`` keeps its order, which JAX's own
  helpers (``process_allgather``, orbax's barriers) rely on.
  """
  import jax
  from jaxprune import sharding
  original = sharding.make_mesh

  def make_mesh(mesh_shape=(-1, 1), axis_names=sharding.AXES, devices=None):
    return original(mesh_shape, axis_names,
                    interleave(jax.devices()) if devices is None else devices)

  sharding.make_mesh = make_mesh


if __name__ == "__main__":
  install()
  from jaxprune.main import run
  sys.argv[0] = "jaxprune"
  run()
