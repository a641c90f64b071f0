"""The exact ``gcloud`` argument lists the launcher runs, as pure functions.

Nothing here runs anything: ``runner.py`` does, and ``--dry-run`` prints these lists
(tests/fixtures/launch/ keeps them as goldens). A queued resource and the TPU VM it
creates share one name (``--node-id`` = the queued resource's name); a multislice
request (``node_count`` > 1) creates the slices ``NAME-0`` ... ``NAME-<N-1>``
(``--node-prefix=NAME``), see :func:`slice_names`.

Example::

  where = Where(project="p", zone="us-central2-b")
  create_queued("pod", where, "v4-32", "tpu-ubuntu2204-base", capacity="spot")
  # ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'pod', '--node-id=pod', ...]
"""

from __future__ import annotations

import dataclasses

__all__ = ["Where", "Network", "slice_names", "create_vm", "create_queued", "describe_vm", "describe_queued",
           "delete_vm", "delete_queued", "list_vms", "ssh", "scp", "CAPACITIES"]

TPUS = ["gcloud", "compute", "tpus"]
# "on-demand" (the default quota), "spot" (preemptible, cheaper) or "reserved" (a reservation).
CAPACITIES = ("on-demand", "spot", "reserved")


@dataclasses.dataclass(frozen=True)
class Where:
  """The project and zone every command names explicitly; ``internal_ip``: ssh and scp
  reach the workers by their internal addresses (VMs without external IPs)."""
  project: str
  zone: str
  internal_ip: bool = False

  def flags(self) -> list[str]:
    return [f"--zone={self.zone}", f"--project={self.project}"]

  def ssh_flags(self) -> list[str]:
    return [*self.flags(), *(["--internal-ip"] if self.internal_ip else [])]


@dataclasses.dataclass(frozen=True)
class Network:
  """How a created TPU VM is attached and who it runs as (``tpu-vm create`` and
  ``queued-resources create`` take the same flags).

  ``internal_ips``: no external IPs (an organisation policy often forbids them; the
  subnetwork then needs Private Google Access for gs://). ``labels``: ``k=v,k2=v2``.
  """
  internal_ips: bool = False
  network: str | None = None
  subnetwork: str | None = None
  service_account: str | None = None
  scopes: str | None = None
  labels: str | None = None

  def flags(self) -> list[str]:
    named = [("network", self.network), ("subnetwork", self.subnetwork),
             ("service-account", self.service_account), ("scopes", self.scopes),
             ("labels", self.labels)]
    return ([*(["--internal-ips"] if self.internal_ips else []),
             *(f"--{flag}={value}" for flag, value in named if value)])


def slice_names(name: str, num_slices: int = 1) -> list[str]:
  """The TPU VMs of ``name``: itself, or the slices a multislice queued resource creates.

  Example: ``slice_names("pod", 2) == ["pod-0", "pod-1"]``; ``slice_names("pod") == ["pod"]``.
  """
  if num_slices < 1:
    raise ValueError(f"num_slices={num_slices}: expected 1 or more")
  return [name] if num_slices == 1 else [f"{name}-{i}" for i in range(num_slices)]


def _capacity(capacity: str) -> list[str]:
  if capacity not in CAPACITIES:
    raise ValueError(f"capacity {capacity!r}: expected one of {CAPACITIES}")
  return [] if capacity == "on-demand" else [f"--{capacity}"]


def create_vm(name: str, where: Where, accelerator_type: str, runtime_version: str,
              capacity: str = "on-demand", network: Network = Network()) -> list[str]:
  """``tpu-vm create`` (fails at once when the zone has no capacity).

  Example: ``create_vm("a", Where("p", "z"), "v5litepod-8", "v2-alpha-tpuv5-lite")``.
  """
  return [*TPUS, "tpu-vm", "create", name, *where.flags(),
          f"--accelerator-type={accelerator_type}", f"--version={runtime_version}",
          *_capacity(capacity), *network.flags()]


def create_queued(name: str, where: Where, accelerator_type: str, runtime_version: str,
                  capacity: str = "on-demand", valid_until: str | None = None,
                  network: Network = Network(), node_count: int = 1) -> list[str]:
  """``queued-resources create``: waits in Cloud TPU's queue until capacity is free.

  ``valid_until`` is a duration (``6h``, ``2d``): the request expires unfilled after it.
  ``node_count`` > 1: multislice, that many slices of ``accelerator_type`` named
  ``NAME-0`` ... (``--node-count``, ``--node-prefix``), provisioned and preempted together.

  Example: ``create_queued("a", Where("p", "z"), "v6e-8", "v2-alpha-tpuv6e", "reserved")``.
  """
  nodes = ([f"--node-id={name}"] if node_count == 1 else
           [f"--node-count={node_count}", f"--node-prefix={name}"])
  return [*TPUS, "queued-resources", "create", name, *nodes, *where.flags(),
          f"--accelerator-type={accelerator_type}", f"--runtime-version={runtime_version}",
          *_capacity(capacity),
          *([f"--valid-until-duration={valid_until}"] if valid_until else []),
          *network.flags()]


def describe_vm(name: str, where: Where) -> list[str]:
  """``tpu-vm describe`` as JSON (``state``, ``acceleratorType``, ``networkEndpoints``)."""
  return [*TPUS, "tpu-vm", "describe", name, *where.flags(), "--format=json"]


def describe_queued(name: str, where: Where) -> list[str]:
  """``queued-resources describe`` as JSON (``state.state``: WAITING_FOR_RESOURCES, ACTIVE...)."""
  return [*TPUS, "queued-resources", "describe", name, *where.flags(), "--format=json"]


def list_vms(where: Where) -> list[str]:
  """``tpu-vm list`` as JSON."""
  return [*TPUS, "tpu-vm", "list", *where.flags(), "--format=json"]


def delete_vm(name: str, where: Where) -> list[str]:
  """``tpu-vm delete`` without gcloud's own prompt (the launcher asks first)."""
  return [*TPUS, "tpu-vm", "delete", name, *where.flags(), "--quiet"]


def delete_queued(name: str, where: Where) -> list[str]:
  """``queued-resources delete --force``: the request and the TPU VM it created."""
  return [*TPUS, "queued-resources", "delete", name, *where.flags(), "--force", "--quiet"]


def ssh(name: str, where: Where, worker: str, command: str | None = None) -> list[str]:
  """``tpu-vm ssh`` on ``worker`` ("all", "0", "1,3"), running ``command`` if given.

  Example: ``ssh("a", Where("p", "z"), "all", "hostname")``.
  """
  return [*TPUS, "tpu-vm", "ssh", name, *where.ssh_flags(), f"--worker={worker}",
          *([f"--command={command}"] if command is not None else [])]


def scp(local: str, name: str, remote: str, where: Where, worker: str = "all") -> list[str]:
  """``tpu-vm scp`` of a local file to ``remote`` (relative to the home folder) on workers."""
  return [*TPUS, "tpu-vm", "scp", local, f"{name}:{remote}", *where.ssh_flags(),
          f"--worker={worker}"]
