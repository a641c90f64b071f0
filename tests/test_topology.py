"""Batches on real TPU slice layouts: each process's rows land once, on the right device.

On a multi-host TPU slice ``sharding.make_mesh`` orders devices by physical topology, so
the mesh's ``data`` axis visits processes interleaved and a process holds several
separate blocks of the global batch. These tests build the mesh over fake devices with
the chips-per-host layouts of real slices (``tests/tpu_topology.py``), let every
process load ``batch[sharding.batch_rows(mesh, B, p)]``, and replay what
``jax.make_array_from_process_local_data`` does with that local batch on each process.
Every device must then hold exactly the rows its index names, with labels and eval
weights still beside their examples. Nothing is compiled or placed on a device: the
mesh, the sharding and its ``devices_indices_map`` are all host-side.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

import numpy as np
import pytest
from jax.sharding import Mesh

from jaxprune import sharding
from tpu_topology import SLICES, TOPOLOGIES, FakeTpuDevice, fake_tpu_devices

Batch = dict[str, np.ndarray]

MESH_SHAPES = [(-1, 1), (-1, 2), (-1, 4)]
SEQ = 5  # tokens per example

def slice_id(tpu: tuple[str, int]) -> str:
  name, slices = tpu
  return name if slices == 1 else f"{slices}x{name}"


def shape_id(shape: tuple[int, int]) -> str:
  return f"mesh({shape[0]},{shape[1]})"


def build_mesh(name: str, slices: int, shape: tuple[int, int]) -> Mesh:
  """The project's mesh over the fake slice. Every preset mesh forms on every slice: where
  ``jax.make_mesh`` would refuse (it splits a physical torus axis only on v5e, so a
  2-wide model axis on a 4x4 v6e or a 4x4x4 v4 fails), ``make_mesh`` splits one."""
  return sharding.make_mesh(shape, devices=fake_tpu_devices(name, slices))


def data_axis_processes(mesh: Mesh) -> list[int]:
  """Process of each position along ``data`` (the first device along ``model``)."""
  return [d.process_index for d in mesh.devices[:, 0]]


def global_batch(rows: int) -> Batch:
  """A batch whose every field says which example it belongs to: ``input_ids`` encode
  the example id, ``labels`` are id % 3 and ``weight`` masks the last 3 (padding)."""
  ids = np.arange(rows)
  return {"input_ids": ids[:, None] * SEQ + np.arange(SEQ),
          "labels": ids % 3,
          "weight": (ids < rows - 3).astype(np.float32)}


def local_batches(mesh: Mesh, batch: Batch) -> dict[int, Batch]:
  """Each process's local batch, as the trainer loads it: its `batch_rows` of ``batch``."""
  rows = len(batch["labels"])
  processes = {d.process_index for d in mesh.devices.flat}
  return {p: {k: v[sharding.batch_rows(mesh, rows, p)] for k, v in batch.items()}
          for p in sorted(processes)}


def span(index: tuple[slice, ...], rows: int) -> tuple[int, int]:
  start, stop, _ = index[0].indices(rows)
  return start, stop


def place(mesh: Mesh, local: Mapping[int, Batch], rows: int
          ) -> dict[FakeTpuDevice, Batch]:
  """What each device holds after every process calls
  ``jax.make_array_from_process_local_data(batch_sharding(mesh), local[p])``.

  Replays jax's rule (jax/_src/array.py): the global size is the local size times the
  number of distinct per-process row sets (which must be equal or disjoint, the same
  count on every process); a process's device row blocks, deduplicated and sorted by
  start, take consecutive blocks of its local data (all of it as is when the local
  data is already the whole batch).
  """
  index_map = sharding.batch_sharding(mesh).devices_indices_map((rows,))
  by_process: dict[int, list[FakeTpuDevice]] = defaultdict(list)
  for device in index_map:
    by_process[device.process_index].append(device)
  spans = {p: sorted({span(index_map[d], rows) for d in devs})
           for p, devs in by_process.items()}
  distinct = {frozenset(s) for s in spans.values()}
  assert len({len(s) for s in spans.values()}) == 1, f"non-uniform sharding: {spans}"
  assert sum(map(len, distinct)) == len(set().union(*distinct)), f"overlap: {spans}"
  block = rows // mesh.shape["data"]
  held = {}
  for p, devices in by_process.items():
    n = len(local[p]["labels"])
    assert n * len(distinct) == rows, f"process {p}: {n} rows do not make {rows}"
    starts = [start for start, _ in spans[p]]
    for d in devices:
      start, stop = span(index_map[d], rows)
      if n == rows:  # the local data is the global array
        take = slice(start, stop)
      else:
        assert n == len(starts) * block, f"process {p}: {n} rows, {len(starts)} blocks"
        take = slice(starts.index(start) * block, (starts.index(start) + 1) * block)
      held[d] = {k: v[take] for k, v in local[p].items()}
  return held


@pytest.mark.parametrize("factor", [2, 4], ids=lambda f: f"rows{f}xdata")
@pytest.mark.parametrize("shape", MESH_SHAPES, ids=shape_id)
@pytest.mark.parametrize("tpu", SLICES, ids=slice_id)
def test_every_local_row_lands_once_on_its_device(tpu, shape, factor):
  """Each device gets exactly the rows its index names, labels and weights aligned."""
  mesh = build_mesh(*tpu, shape)
  rows = factor * mesh.shape["data"]
  batch = global_batch(rows)
  local = local_batches(mesh, batch)
  held = place(mesh, local, rows)
  index_map = sharding.batch_sharding(mesh).devices_indices_map((rows,))
  assert set(held) == set(mesh.devices.flat)
  copies: Counter[int] = Counter()
  for device, got in held.items():
    want = index_map[device]
    np.testing.assert_array_equal(got["input_ids"], batch["input_ids"][want],
                                  err_msg=repr(device))
    ids = got["input_ids"][:, 0] // SEQ
    np.testing.assert_array_equal(got["labels"], ids % 3, err_msg=repr(device))
    np.testing.assert_array_equal(got["weight"], ids < rows - 3, err_msg=repr(device))
    copies.update(ids.tolist())
  # Once per model replica: every example on exactly `model` devices.
  assert copies == {i: mesh.shape["model"] for i in range(rows)}
  loaded = np.concatenate([sharding.batch_rows(mesh, rows, p) for p in local])
  assert set(loaded.tolist()) == set(range(rows))
  for p, rows_p in local.items():  # local fields stay beside their examples too
    ids = rows_p["input_ids"][:, 0] // SEQ
    np.testing.assert_array_equal(ids, sharding.batch_rows(mesh, rows, p))
    np.testing.assert_array_equal(rows_p["labels"], ids % 3)


@pytest.mark.parametrize("name, head", [
    ("v4-16", [0, 1] * 4),
    ("v4-32", [0, 1, 2, 3] * 4),
    ("v4-64", [0, 2, 4, 6, 0, 2, 4, 6, 1, 3, 5, 7, 1, 3, 5, 7]),
])
def test_data_axis_matches_the_order_seen_on_real_v4(name, head):
  """The fakes reproduce the data-axis process orders users saw on real v4 slices."""
  mesh = sharding.make_mesh((-1, 1), devices=fake_tpu_devices(name))
  assert data_axis_processes(mesh)[:len(head)] == head


@pytest.mark.parametrize("name", ["v4-32", "v5litepod-32", "v5litepod-16"])
def test_data_axis_is_interleaved_so_contiguous_rows_would_misplace(name):
  """The data axis is not process-contiguous and a process's rows are not one block:
  loading contiguous row ranges per process (the old assumption) puts wrong rows on
  devices, which the `place` check above catches."""
  mesh = sharding.make_mesh((-1, 1), devices=fake_tpu_devices(name))
  order = data_axis_processes(mesh)
  assert order != sorted(order)
  rows = 2 * mesh.shape["data"]
  mine = sharding.batch_rows(mesh, rows, 0)
  assert len(mine) == rows // TOPOLOGIES[name].num_hosts
  assert np.any(np.diff(mine) > 1), f"process 0 holds one contiguous block: {mine}"
  batch = global_batch(rows)
  per = rows // TOPOLOGIES[name].num_hosts
  contiguous = {p: {k: v[p * per:(p + 1) * per] for k, v in batch.items()}
                for p in range(TOPOLOGIES[name].num_hosts)}
  index_map = sharding.batch_sharding(mesh).devices_indices_map((rows,))
  held = place(mesh, contiguous, rows)
  assert any(not np.array_equal(got["input_ids"], batch["input_ids"][index_map[d]])
             for d, got in held.items())


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=shape_id)
def test_two_slices_split_the_data_axis_slice_first(shape):
  """Two v5litepod-16 slices: slice 0 (processes 0-3) holds the first half of ``data``,
  so its processes load the first half of each global batch."""
  mesh = sharding.make_mesh(shape, devices=fake_tpu_devices("v5litepod-16", 2))
  half = mesh.shape["data"] // 2
  slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slices[:half] == 0).all() and (slices[half:] == 1).all()
  rows = 4 * mesh.shape["data"]
  first = np.concatenate([sharding.batch_rows(mesh, rows, p) for p in range(4)])
  assert sorted(set(first.tolist())) == list(range(rows // 2))


@pytest.mark.parametrize("tpu", SLICES, ids=slice_id)
def test_fake_devices_follow_the_slice_layout(tpu):
  """jax.devices() order: ids consecutive, process-major; each host owns one block of
  the chip grid; coords fill the grid once per slice."""
  name, slices = tpu
  topo = TOPOLOGIES[name]
  devices = fake_tpu_devices(name, slices)
  assert [d.id for d in devices] == list(range(slices * topo.num_devices))
  processes = [d.process_index for d in devices]
  assert processes == sorted(processes)
  assert Counter(processes) == {p: topo.devices_per_host
                                for p in range(slices * topo.num_hosts)}
  for s in range(slices):
    coords = [d.coords for d in devices if d.slice_index == s]
    assert sorted(coords) == sorted(np.ndindex(*topo.chips))
  for p in set(processes):
    mine = np.array([d.coords for d in devices if d.process_index == p])
    extent = tuple(mine.max(0) - mine.min(0) + 1)
    assert extent == topo.host and (mine.min(0) % topo.host == 0).all()
