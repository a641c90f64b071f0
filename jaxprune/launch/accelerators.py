"""Cloud TPU accelerator types: generation, number of hosts (workers), runtime version.

The runtime (software) version is the one Cloud TPU's documentation recommends for JAX
per generation ("TPU software versions": v6e ``v2-alpha-tpuv6e``, v5p ``v2-alpha-tpuv5``,
v5e ``v2-alpha-tpuv5-lite``, v4 and older ``tpu-ubuntu2204-base``).

Example::

  acc = parse("v4-32")
  acc.hosts            # 4: v4 counts TensorCores, 2 per chip, 4 chips per host
  acc.runtime_version  # "tpu-ubuntu2204-base"
"""

from __future__ import annotations

import dataclasses
import re

from jaxprune.launch.settings import LaunchError

__all__ = ["Accelerator", "GENERATIONS", "parse"]


@dataclasses.dataclass(frozen=True)
class Generation:
  """How one TPU generation names its slices and spreads them over hosts."""
  runtime_version: str
  # The number in the type counts TensorCores (2 per chip: v2-v4, v5p) or chips (v5e, v6e).
  cores_per_chip: int
  # Chips per host in a multi-host slice.
  chips_per_host: int
  # Chip counts that fit on one host.
  single_host_chips: tuple[int, ...]


GENERATIONS = {
    "v2": Generation("tpu-ubuntu2204-base", 2, 4, (4,)),
    "v3": Generation("tpu-ubuntu2204-base", 2, 4, (4,)),
    "v4": Generation("tpu-ubuntu2204-base", 2, 4, (4,)),
    "v5p": Generation("v2-alpha-tpuv5", 2, 4, (4,)),
    "v5litepod": Generation("v2-alpha-tpuv5-lite", 1, 4, (1, 4, 8)),
    "v6e": Generation("v2-alpha-tpuv6e", 1, 4, (1, 4, 8)),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A parsed accelerator type such as ``v5litepod-16``."""
  name: str
  generation: str
  chips: int
  hosts: int
  runtime_version: str


def parse(name: str) -> Accelerator:
  """Parses an accelerator type; a one-line ``LaunchError`` for unknown ones.

  Example: ``parse("v5litepod-16").hosts == 4``.
  """
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name or "")
  known = ", ".join(f"{g}-N" for g in GENERATIONS)
  if match is None or match[1] not in GENERATIONS:
    raise LaunchError(f"unknown accelerator type {name!r} (expected one of {known}, "
                      "e.g. v4-8, v4-32, v5litepod-8, v5p-8, v6e-8)")
  gen = GENERATIONS[match[1]]
  size = int(match[2])
  chips, rest = divmod(size, gen.cores_per_chip)
  if rest or chips == 0:
    raise LaunchError(f"unknown accelerator type {name!r}: {match[1]} sizes count "
                      f"TensorCores, a multiple of {gen.cores_per_chip}")
  if chips in gen.single_host_chips:
    hosts = 1
  elif chips % gen.chips_per_host == 0 and chips > max(gen.single_host_chips):
    hosts = chips // gen.chips_per_host
  else:
    raise LaunchError(f"unknown accelerator type {name!r}: no {match[1]} slice of that size")
  return Accelerator(name, match[1], chips, hosts, gen.runtime_version)
