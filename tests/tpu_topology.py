"""Fake TPU device sets with the chips-per-host layouts of real Cloud TPU slices.

A real multi-host slice does not lay its devices out in process order: JAX's
topology-aware ``create_device_mesh`` (behind ``jax.make_mesh`` and
``jaxprune.sharding.make_mesh``) orders them by their physical ``coords``, so the mesh's
``data`` axis visits the processes interleaved (a v4-32 goes ``0,1,2,3,0,1,2,3,...``).
Tests that only run on CPU devices (one process, ids in order) never see this; these
fakes carry the attributes the mesh code reads (``id``, ``process_index``, ``coords``,
``core_on_chip``, ``slice_index``, ``platform``, ``device_kind``), so a mesh, a
``NamedSharding`` and its ``devices_indices_map`` can be built over a whole pod slice
without a TPU and without compiling anything.

Layouts (``TOPOLOGIES``; one device per chip, as JAX sees v4 and v5p in megacore mode):

* v4-8 .. v4-128: the name counts TensorCores (2 per chip); chip grids 2x2x1, 2x2x2,
  2x2x4, 2x4x4, 4x4x4; each host holds a 2x2x1 block of chips; ``"TPU v4"``.
* v5p-8 .. v5p-64: likewise (2 TensorCores per chip); grids 2x2x1, 2x2x2, 2x2x4, 2x4x4;
  hosts hold 2x2x1; ``"TPU v5p"``.
* v5litepod-8 .. v5litepod-256 (v5e): the name counts chips; grids 2x4 (one host with
  all 8 chips), 4x4, 4x8, 8x8, 8x16, 16x16; multi-host slices have 4 chips per host, a
  2x2 block; coords ``(x, y, 0)``; ``"TPU v5 lite"``.
* v6e-8 .. v6e-256 (Trillium): the v5litepod layouts; ``"TPU v6 lite"``.

Device order is that of ``jax.devices()``: process-major, ids consecutive within a
process, chips of a host with x fastest, then y, then z; with several slices, slice 0's
processes and devices come first and slice ``s``'s processes are numbered after slice
``s - 1``'s. Hosts are numbered by the position of their block in the chip grid, x
fastest, then y, then z. That tiling reproduces the data-axis orders users observed
with ``create_device_mesh`` on real slices, for a ``(-1, 1)`` mesh:

* v4-16: ``[0, 1, 0, 1, ...]``
* v4-32: ``[0, 1, 2, 3, 0, 1, 2, 3, ...]``
* v4-64: ``[0, 2, 4, 6, 0, 2, 4, 6, 1, 3, 5, 7, ...]`` (hosts tile the 2x4x4 grid as a
  1x2x4 array of 2x2x1 blocks, y before z; numbering z before y instead would give
  ``[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, ...]``).

Example::

  devices = fake_tpu_devices("v4-32")
  mesh = sharding.make_mesh((-1, 1), devices=devices)
  [d.process_index for d in mesh.devices.flat]  # [0, 1, 2, 3, 0, 1, 2, 3, ...]
"""

from __future__ import annotations

import dataclasses
import itertools
import math

__all__ = ["FakeTpuDevice", "SLICES", "TOPOLOGIES", "Topology", "fake_tpu_devices"]


@dataclasses.dataclass(frozen=True, repr=False)
class FakeTpuDevice:
  """Stands in for a ``jax.Device`` of a TPU slice: the attributes mesh code reads."""
  id: int
  process_index: int
  coords: tuple[int, int, int]
  core_on_chip: int = 0
  slice_index: int = 0
  platform: str = "tpu"
  device_kind: str = "TPU v4"

  def __repr__(self) -> str:
    return (f"TPU_{self.id}(process={self.process_index}, coords={self.coords}, "
            f"slice={self.slice_index})")


@dataclasses.dataclass(frozen=True)
class Topology:
  """One slice type: its device kind, its chip grid and the block of chips per host."""
  name: str
  device_kind: str
  chips: tuple[int, int, int]
  host: tuple[int, int, int]

  @property
  def num_devices(self) -> int:
    return math.prod(self.chips)

  @property
  def num_hosts(self) -> int:
    return self.num_devices // math.prod(self.host)

  @property
  def devices_per_host(self) -> int:
    return math.prod(self.host)


def _v4_like(prefix: str, kind: str, grids: dict[int, tuple[int, int, int]]
             ) -> dict[str, Topology]:
  """v4 / v5p: hosts of 2x2x1 chips (a one-host slice is its own block)."""
  return {f"{prefix}-{n}": Topology(f"{prefix}-{n}", kind, grid, (2, 2, 1))
          for n, grid in grids.items()}


def _v5e_like(prefix: str, kind: str) -> dict[str, Topology]:
  """v5e / v6e: 8 chips on one host, else hosts of 2x2 chips."""
  grids = {8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
  return {f"{prefix}-{n}": Topology(f"{prefix}-{n}", kind, (x, y, 1),
                                    (x, y, 1) if n == 8 else (2, 2, 1))
          for n, (x, y) in grids.items()}


TOPOLOGIES: dict[str, Topology] = {
    **_v4_like("v4", "TPU v4", {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4),
                                64: (2, 4, 4), 128: (4, 4, 4)}),
    **_v4_like("v5p", "TPU v5p", {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4),
                                  64: (2, 4, 4)}),
    **_v5e_like("v5litepod", "TPU v5 lite"),
    **_v5e_like("v6e", "TPU v6 lite"),
}
"""Slice name -> `Topology`; see the module docstring for the layouts."""

SLICES: list[tuple[str, int]] = [(name, 1) for name in TOPOLOGIES] + [("v5litepod-16", 2)]
"""``(name, num_slices)`` pairs the tests cover: every topology, plus a two-slice
v5litepod-16 (multislice over DCN: ``slice_index`` 0 and 1)."""


def fake_tpu_devices(name: str, num_slices: int = 1) -> list[FakeTpuDevice]:
  """The devices of ``num_slices`` slices of type ``name``, in ``jax.devices()`` order.

  Args:
    name: a key of ``TOPOLOGIES``, e.g. ``"v4-32"`` or ``"v5litepod-16"``.
    num_slices: identical slices joined over DCN; their devices get ``slice_index``
      0, 1, ... and their processes are numbered slice after slice.

  Example: ``fake_tpu_devices("v5litepod-16", 2)`` is 32 devices on 8 processes.
  """
  if name not in TOPOLOGIES:
    raise KeyError(f"unknown TPU slice {name!r}; known: {', '.join(TOPOLOGIES)}")
  if num_slices < 1:
    raise ValueError(f"num_slices={num_slices} must be at least 1")
  topo = TOPOLOGIES[name]
  blocks = [c // h for c, h in zip(topo.chips, topo.host)]
  # Host blocks numbered x fastest, then y, then z (product iterates its last factor
  # fastest, so it runs over (z, y, x)).
  hosts = [(bx, by, bz) for bz, by, bx in itertools.product(*map(range, blocks[::-1]))]
  devices: list[FakeTpuDevice] = []
  for s in range(num_slices):
    for h, (bx, by, bz) in enumerate(hosts):
      process = s * len(hosts) + h
      for z, y, x in itertools.product(*map(range, topo.host[::-1])):
        coords = (bx * topo.host[0] + x, by * topo.host[1] + y, bz * topo.host[2] + z)
        devices.append(FakeTpuDevice(len(devices), process, coords, slice_index=s,
                                     device_kind=topo.device_kind))
  return devices
