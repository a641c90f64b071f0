"""A fake ``gcloud`` for the launcher's tests: Cloud TPU VMs simulated on this machine.

The ``gcloud`` script beside this module runs it. Put this folder first on PATH and
point ``FAKE_GCLOUD_STATE`` at an empty folder (the fake's state: VMs, queued resources,
worker homes, a log of every call in calls.jsonl). Standard library only.

What it implements (the arguments are parsed strictly: a flag the real command does not
take is an error, exit 2):
  compute tpus tpu-vm create NAME --zone --project --accelerator-type --version
                                  [--spot | --reserved | --preemptible] [--async]
  compute tpus tpu-vm describe | delete NAME --zone --project [--format=json] [--quiet]
  compute tpus tpu-vm list --zone --project [--format=json]
  compute tpus tpu-vm ssh NAME --zone --project --worker=all|I|I,J|I-J --command=CMD
  compute tpus tpu-vm scp SRC NAME:DEST --zone --project --worker=... (to the workers)
  compute tpus queued-resources create NAME (--node-id | --node-count --node-prefix)
      --zone --project --accelerator-type --runtime-version
      [--spot | --reserved | --guaranteed]
      [--valid-until-duration | --valid-until-time] [--async]
  compute tpus queued-resources describe | list | delete [--force] [--quiet]
Multislice (``--node-count=N --node-prefix=P``): the resource makes the VMs P-0 ... P-<N-1>,
provisioned together and preempted together (one preempted slice suspends the resource
and deletes every slice); the workers of all slices form one JAX run (process count
slices x hosts, process id slice x hosts + worker), as TPU auto-detection makes of the
MEGASCALE_* variables that a real multislice resource writes into each VM's metadata.
A queued resource goes ACCEPTED, WAITING_FOR_RESOURCES (FAKE_GCLOUD_QUEUE_POLLS
describes), PROVISIONING (its node CREATING), ACTIVE (node READY), one state per
describe; FAKE_GCLOUD_QR_FAIL=FAILED[:N] makes it FAILED instead. A preempted queued
node is deleted and its resource goes SUSPENDING, then SUSPENDED; a deleted resource is
DELETING for FAKE_GCLOUD_DELETE_POLLS describes (default 0). <state>/vms/NAME.repair
holding N: the next N describes of NAME say REPAIRING. FAKE_GCLOUD_FAIL_CREATE also
takes QUOTA, PERMISSION and ZONE (gcloud's messages for those).

Workers. A VM has as many workers as the real slice has hosts: v2/v3/v4/v5p-N: N/2
chips, 4 per host (v4-8: 1 worker, v4-16: 2, v4-32: 4); v5litepod/v6e-N: N chips, one
host up to 8, else 4 per host (v6e-8: 1, v6e-16: 4). ``ssh`` runs CMD with ``bash -c``
as one local process per worker, in its own session (like a remote process, it outlives
the ssh client that started it), with HOME and the working directory set to that
worker's folder under the state folder, the caller's environment otherwise, and:
  JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=2
  (FAKE_GCLOUD_DEVICES changes the 2; the caller's other XLA flags and its compilation
  cache, JAX_COMPILATION_CACHE_DIR, are kept; other JAX_* are not), and what lets
  ``jax.distributed.initialize()`` with no arguments find the run, as TPU auto-detection does on a pod slice:
  JAX_COORDINATOR_ADDRESS=127.0.0.1:<a port chosen per VM> and Open MPI's variables
  that jax's OmpiCluster reads (OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE/RANK/
  LOCAL_RANK, with LOCAL_RANK 0: one process per host). OmpiCluster then also passes
  local_device_ids=[0]; on CPU that only sets the CUDA/ROCm visible-device options, and
  each process keeps its 2 CPU devices (checked by the tests: 4 global devices).
The ssh exit status is the worker's (the first non-zero one with several workers), or
255 when the VM was preempted meanwhile, as a real ssh whose host went away.

Faults:
  FAKE_GCLOUD_FAIL_CREATE=RESOURCE_EXHAUSTED[:N]  the next N creates (default: all) fail
      as a zone without capacity does.
  FAKE_GCLOUD_PREEMPT_AFTER=S[:N]  VMs created now are preempted S seconds later (only
      the first N preemptions, default 1, so a re-created VM survives).
  <state>/vms/NAME.preempt  a file that preempts NAME as soon as a running ssh sees it.
      Preemption: state PREEMPTED (its queued resource SUSPENDED), SIGTERM to every
      worker process (the ssh sessions' and every process whose working directory is
      in a worker's home: detached jobs too), SIGKILL after FAKE_GCLOUD_PREEMPT_GRACE
      seconds (default 5).
  FAKE_GCLOUD_FAIL_WORKER=I[:N]  the next N ssh commands (default: every one) on worker
      I print a line and exit 1.

Setup shortcut (only with FAKE_GCLOUD_PYTHON): creating a venv and pip-installing jax
and jaxprune would take minutes and a package index, so with FAKE_GCLOUD_PYTHON = a
Python that already has jaxprune's dependencies, the workers' PATH starts with stand-ins
for python3 / python3.11 whose ``-m venv DIR`` makes a venv-shaped DIR/bin: a ``pip``
that records its arguments (DIR/pip-calls.jsonl) and, for a local source folder, where
it is (DIR/jaxprune-source), installing nothing; and a ``jaxprune`` console script that
runs FAKE_GCLOUD_PYTHON with that source folder first on sys.path, so the job runs the
code unpacked from the scp'd tarball. Everything else in the setup script (the stamp
check, tar, the stamp file) runs as written. Without FAKE_GCLOUD_PYTHON nothing is
special-cased.

Not simulated: authentication, projects and quotas, networking beyond 127.0.0.1, real
TPUs (workers get CPU devices), ssh keys, interactive ssh (--command is required), scp
from workers, maintenance events, queued-resource start/end times (accepted, ignored).
"""

import argparse
import json
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import sys
import time

STATE = Path(os.environ.get("FAKE_GCLOUD_STATE", "")).resolve()
HERE = Path(__file__).resolve()


def fail(command: str, message: str, code: int = 1) -> None:
  print(f"ERROR: (gcloud.{command}) {message}", file=sys.stderr)
  sys.exit(code)


def write_json(path: Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(value, indent=1))
  os.replace(tmp, path)


def read_json(path: Path):
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None


def vm_path(name: str) -> Path:
  return STATE / "vms" / f"{name}.json"


def qr_path(name: str) -> Path:
  return STATE / "qrs" / f"{name}.json"


def homes(name: str) -> Path:
  return STATE / "homes" / name


def pids_dir(name: str) -> Path:
  return STATE / "pids" / name


def workers_of(accelerator: str) -> int:
  """Hosts of a real slice of this type (see the module docstring)."""
  generation, _, size = accelerator.rpartition("-")
  if not size.isdigit():
    raise ValueError(accelerator)
  size = int(size)
  if generation in ("v2", "v3", "v4", "v5p") and size % 8 == 0:
    return max(1, size // 2 // 4)
  if generation in ("v5litepod", "v6e") and (size in (1, 4, 8) or size % 16 == 0):
    return 1 if size <= 8 else size // 4
  raise ValueError(accelerator)


def counter(name: str) -> int:
  """Increments and returns a counter kept in the state folder."""
  path = STATE / f"{name}.count"
  value = int(path.read_text()) if path.exists() else 0
  path.write_text(str(value + 1))
  return value


def allowed(env: str) -> bool:
  """Whether a fault given as ``KIND[:N]`` in ``env`` applies once more (counts uses)."""
  spec = os.environ.get(env, "")
  if not spec:
    return False
  times = spec.split(":")[1] if ":" in spec else ""
  return counter(env) < int(times) if times else True


def node_ids(qr: dict) -> list[str]:
  """The VMs a queued resource makes: its node id, or the slices of a multislice one."""
  spec = qr["tpu"]["nodeSpec"][0]
  if "multisliceParams" in spec:
    params = spec["multisliceParams"]
    return [f"{params['nodeIdPrefix']}-{i}" for i in range(params["nodeCount"])]
  return [spec["nodeId"]]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def check_where(command: str, record: dict | None, args, kind: str, name: str) -> dict:
  if record is None or record["zone"] != args.zone or record["project"] != args.project:
    fail(command, f"NOT_FOUND: Resource 'projects/{args.project}/locations/{args.zone}/"
                  f"{kind}/{name}' was not found")
  return record


# FAKE_GCLOUD_FAIL_CREATE=KIND[:N]: what gcloud prints for each kind of failed create.
CREATE_ERRORS = {
    "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED: There is no more capacity in the zone "
                          "\"{zone}\"; you can try in another zone where Cloud TPU Nodes are "
                          "offered (see https://cloud.google.com/tpu/docs/regions) [EID: 0x1]",
    "QUOTA": "RESOURCE_EXHAUSTED: Quota limit 'TPUV4PodPerProjectPerZoneForTPUAPI' has been "
             "exceeded. Limit: 0 in zone {zone}.",
    "PERMISSION": "PERMISSION_DENIED: Permission 'tpu.nodes.create' denied on "
                  "'projects/{project}/locations/{zone}/nodes/{name}'",
    "ZONE": "NOT_FOUND: Location {zone} is not found or access is unauthorized.",
}


def create_node(command: str, name: str, args, version: str, queued: str | None,
                state: str = "READY", slices: tuple[int, int, int] | None = None) -> None:
  """A VM record (and its workers' homes); ``queued``: made by that queued resource as
  it provisions (the create call's faults and checks were made then); ``slices``: (this
  slice's index, the number of slices, their shared coordinator port) of a multislice
  resource."""
  kind = os.environ.get("FAKE_GCLOUD_FAIL_CREATE", "").split(":")[0]
  if not queued and kind in CREATE_ERRORS and allowed("FAKE_GCLOUD_FAIL_CREATE"):
    fail(command, CREATE_ERRORS[kind].format(zone=args.zone, project=args.project, name=name))
  if vm_path(name).exists():
    fail(command, f"ALREADY_EXISTS: Resource 'projects/{args.project}/locations/"
                  f"{args.zone}/nodes/{name}' already exists")
  try:
    workers = workers_of(args.accelerator_type)
  except ValueError:
    fail(command, f"INVALID_ARGUMENT: unknown accelerator type {args.accelerator_type}")
  capacity = {"spot": args.spot, "reserved": args.reserved,
              "preemptible": getattr(args, "preemptible", False)}
  record = {
      "name": f"projects/{args.project}/locations/{args.zone}/nodes/{name}",
      "state": state, "acceleratorType": args.accelerator_type,
      "runtimeVersion": version, "zone": args.zone, "project": args.project,
      "networkEndpoints": [{"ipAddress": "127.0.0.1", "port": 8470}] * workers,
      "schedulingConfig": {k: True for k, v in capacity.items() if v},
      "queuedResource": queued, "coordinatorPort": slices[2] if slices else free_port(),
      **({"sliceIndex": slices[0], "slices": slices[1]} if slices else {}),
  }
  preempt = os.environ.get("FAKE_GCLOUD_PREEMPT_AFTER", "")
  if preempt and allowed("FAKE_GCLOUD_PREEMPT_AFTER"):
    record["preemptAt"] = time.time() + float(preempt.split(":")[0])
  shutil.rmtree(homes(name), ignore_errors=True)
  for i in range(workers):
    (homes(name) / f"worker-{i}").mkdir(parents=True)
  write_json(vm_path(name), record)


def on_vm(name: str) -> list[int]:
  """Every process running "on" the VM: its cwd is in one of the VM's worker homes.

  The ssh sessions' process groups are not enough: a job started detached (setsid
  nohup, as jaxprune-tpu does) leaves them, and a preempted or deleted VM still takes
  it down.
  """
  root = str(homes(name).resolve())
  found = []
  for proc in Path("/proc").iterdir():
    if proc.name.isdigit() and int(proc.name) != os.getpid():
      try:
        cwd = os.readlink(proc / "cwd")
      except OSError:
        continue
      if cwd == root or cwd.startswith(root + os.sep):
        found.append(int(proc.name))
  return found


def kill_workers(name: str, sig: int) -> None:
  for pid_file in pids_dir(name).glob("*") if pids_dir(name).is_dir() else []:
    try:
      os.killpg(int(pid_file.name), sig)
    except (ProcessLookupError, PermissionError, ValueError):
      pid_file.unlink(missing_ok=True)
  for pid in on_vm(name):
    try:
      os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
      pass


def _stat(pid: int | str) -> tuple[str, int] | None:
  """A process's state letter and process group, from /proc; None when it is gone."""
  try:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except OSError:
    return None
  return fields[0], int(fields[2])


def alive_workers(name: str) -> bool:
  """Whether a process of the VM's ssh sessions or jobs still runs. Zombies do not count:
  ``killpg(group, 0)`` succeeds for one, and an ssh session's shell stays one until the
  fake ssh that started it reaps it, so the ssh waiting here for the workers to die
  would wait for its own child until the grace period ran out."""
  live = {stat[1] for proc in Path("/proc").iterdir()
          if proc.name.isdigit() and (stat := _stat(proc.name)) and stat[0] != "Z"}
  for pid_file in pids_dir(name).glob("*") if pids_dir(name).is_dir() else []:
    if pid_file.name.isdigit() and int(pid_file.name) in live:
      return True
    pid_file.unlink(missing_ok=True)
  return any((stat := _stat(pid)) and stat[0] != "Z" for pid in on_vm(name))


def maybe_preempt(name: str) -> bool:
  """Preempts ``name`` when its time came or its trigger file exists; True if preempted."""
  record = read_json(vm_path(name))
  if record is None or record["state"] != "READY":
    return False
  trigger = STATE / "vms" / f"{name}.preempt"
  if not trigger.exists() and time.time() < record.get("preemptAt", float("inf")):
    return False
  try:  # one process does it
    os.close(os.open(STATE / "vms" / f"{name}.preempting", os.O_CREAT | os.O_EXCL))
  except FileExistsError:
    return True
  trigger.unlink(missing_ok=True)
  queued = record.get("queuedResource")
  # A spot VM is PREEMPTED; a (legacy) preemptible one TERMINATED; a queued resource's
  # VMs (every slice of a multislice one) are deleted while the resource goes
  # SUSPENDING, then SUSPENDED.
  victims = [name]
  qr = read_json(qr_path(queued)) if queued else None
  if qr is not None:
    victims = [n for n in node_ids(qr) if vm_path(n).exists()]
    qr["state"] = {"state": "SUSPENDING"}
    write_json(qr_path(queued), qr)
  for victim in victims:
    vm = read_json(vm_path(victim))
    vm["state"] = "TERMINATED" if vm["schedulingConfig"].get("preemptible") else "PREEMPTED"
    write_json(vm_path(victim), vm)
  for victim in victims:
    kill_workers(victim, signal.SIGTERM)
  deadline = time.time() + float(os.environ.get("FAKE_GCLOUD_PREEMPT_GRACE", "5"))
  while any(alive_workers(v) for v in victims) and time.time() < deadline:
    time.sleep(0.1)
  for victim in victims:
    kill_workers(victim, signal.SIGKILL)
    if queued:
      delete_node(victim)
  (STATE / "vms" / f"{name}.preempting").unlink(missing_ok=True)
  return True


def delete_node(name: str) -> None:
  kill_workers(name, signal.SIGKILL)
  vm_path(name).unlink(missing_ok=True)
  shutil.rmtree(homes(name), ignore_errors=True)
  shutil.rmtree(pids_dir(name), ignore_errors=True)


def parse_workers(spec: str, count: int, command: str) -> list[int]:
  if spec == "all":
    return list(range(count))
  chosen = []
  for part in spec.split(","):
    low, _, high = part.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
      fail(command, f"invalid --worker={spec}")
    chosen += list(range(int(low), int(high or low) + 1))
  if any(i >= count for i in chosen):
    fail(command, f"INVALID_ARGUMENT: worker {max(chosen)} of a {count}-worker TPU")
  return chosen


def make_fake_bin() -> Path:
  """The python3 / python3.11 stand-ins of the setup shortcut (module docstring)."""
  python = os.environ["FAKE_GCLOUD_PYTHON"]
  folder = STATE / "fakebin"
  folder.mkdir(parents=True, exist_ok=True)
  script = ("#!/bin/bash\n# fake gcloud: `-m venv DIR` makes a venv-shaped DIR (see its "
            "docstring)\n"
            f'if [ "$1" = -m ] && [ "$2" = venv ] && [ $# -eq 3 ]; then exec {python} {HERE} '
            f'__fake-venv "$3"; fi\nexec {python} "$@"\n')
  for name in ("python3", "python3.11"):
    path = folder / name
    if path.is_file() and path.read_text() == script:
      continue
    # Written aside, then renamed over: the ssh of another slice may be executing the
    # stand-in right now, and a file open for writing cannot be executed ("Text file
    # busy").
    tmp = folder / f".{name}.{os.getpid()}"
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, path)
  return folder


PIP = """#!/bin/sh
'''exec' {python} "$0" "$@"
'''
# fake gcloud's pip: records its arguments and where a local source folder is; installs
# nothing ({python} already has jaxprune's dependencies).
import json, os, sys
venv = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(venv, "pip-calls.jsonl"), "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
for arg in sys.argv[1:]:
  folder = arg.split("[")[0]
  if not arg.startswith("-") and os.path.isfile(os.path.join(folder, "pyproject.toml")):
    with open(os.path.join(venv, "jaxprune-source"), "w") as f:
      f.write(os.path.abspath(folder))
"""

JAXPRUNE = """#!/bin/sh
'''exec' {python} "$0" "$@"
'''
# fake gcloud's jaxprune console script: the code pip was pointed at, first on sys.path.
import os, sys
venv = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
  with open(os.path.join(venv, "jaxprune-source")) as f:
    sys.path.insert(0, f.read().strip())
except FileNotFoundError:
  sys.exit("jaxprune: not installed in " + venv)
sys.argv[0] = "jaxprune"
from jaxprune.main import run
run()
"""


def fake_venv(folder: str) -> None:
  python = os.environ.get("FAKE_GCLOUD_PYTHON") or sys.executable
  bin_dir = Path(folder) / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name, text in (("pip", PIP), ("jaxprune", JAXPRUNE)):
    (bin_dir / name).write_text(text.format(python=python))
    (bin_dir / name).chmod(0o755)
  python_link = bin_dir / "python"
  python_link.write_text(f'#!/bin/sh\nexec {python} "$@"\n')
  python_link.chmod(0o755)


# The caller's JAX settings a worker keeps: the tests' shared compilation cache (a real
# pod's workers would each have their own; the programs are the same), and its binary
# sharing between the processes of a run (tests/conftest.py).
KEPT_JAX = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_SHARE_BINARY_BETWEEN_HOSTS")


def worker_env(record: dict, name: str, index: int, count: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k in KEPT_JAX or not k.startswith(("JAX_", "OMPI_", "FAKE_GCLOUD_", "XLA_FLAGS"))}
  home = homes(name) / f"worker-{index}"
  port = record["coordinatorPort"]
  if record.get("slices"):  # one run over every slice's workers, slice after slice
    index, count = record["sliceIndex"] * count + index, record["slices"] * count
  # The caller's XLA flags (the tests' optimisation level) with this host's devices.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update({
      "HOME": str(home), "PWD": str(home), "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join(flags + ["--xla_force_host_platform_device_count="
                                     + os.environ.get("FAKE_GCLOUD_DEVICES", "2")]),
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "OMPI_MCA_orte_hnp_uri": f"{port * 4096}.0;tcp://127.0.0.1:{port}",
      "OMPI_COMM_WORLD_SIZE": str(count), "OMPI_COMM_WORLD_RANK": str(index),
      "OMPI_COMM_WORLD_LOCAL_RANK": "0",
  })
  if os.environ.get("FAKE_GCLOUD_PYTHON"):
    env["PATH"] = f"{make_fake_bin()}{os.pathsep}{env.get('PATH', '')}"
  return env


def ssh(args) -> None:
  command = "compute.tpus.tpu-vm.ssh"
  record = check_where(command, read_json(vm_path(args.name)), args, "nodes", args.name)
  maybe_preempt(args.name)
  record = read_json(vm_path(args.name))
  if record["state"] != "READY":
    fail(command, f"FAILED_PRECONDITION: the TPU {args.name} is {record['state']}, not READY",
         255)
  if args.command is None:
    fail(command, "the fake gcloud has no interactive ssh: pass --command")
  count = len(record["networkEndpoints"])
  chosen = parse_workers(args.worker, count, command)
  fail_worker = os.environ.get("FAKE_GCLOUD_FAIL_WORKER", "").split(":")[0] or None
  if fail_worker is not None and int(fail_worker) in chosen:
    fail_worker = fail_worker if allowed("FAKE_GCLOUD_FAIL_WORKER") else None
  procs = {}
  pids_dir(args.name).mkdir(parents=True, exist_ok=True)
  for i in chosen:
    script = args.command
    if fail_worker is not None and int(fail_worker) == i:
      script = f"echo 'fake gcloud: worker {i} fails (FAKE_GCLOUD_FAIL_WORKER)' >&2; exit 1"
    procs[i] = subprocess.Popen(["bash", "-c", script], cwd=homes(args.name) / f"worker-{i}",
                                env=worker_env(record, args.name, i, count),
                                start_new_session=True, stdin=subprocess.DEVNULL)
    (pids_dir(args.name) / str(procs[i].pid)).write_text(str(i))
  preempted = False
  while any(p.poll() is None for p in procs.values()):
    preempted = maybe_preempt(args.name) or preempted
    time.sleep(0.2)
  for p in procs.values():
    (pids_dir(args.name) / str(p.pid)).unlink(missing_ok=True)
  current = read_json(vm_path(args.name))
  if preempted or current is None or current["state"] != "READY":
    print("Connection to 127.0.0.1 closed by remote host.", file=sys.stderr)
    sys.exit(255)
  codes = [p.returncode for p in procs.values()]
  sys.exit(next((c for c in codes if c != 0), 0))


def scp(args) -> None:
  command = "compute.tpus.tpu-vm.scp"
  name, _, dest = args.destination.partition(":")
  if not dest:
    fail(command, "the fake gcloud copies to workers only: scp SRC NAME:DEST")
  record = check_where(command, read_json(vm_path(name)), args, "nodes", name)
  if record["state"] != "READY":
    fail(command, f"FAILED_PRECONDITION: the TPU {name} is {record['state']}", 255)
  for i in parse_workers(args.worker, len(record["networkEndpoints"]), command):
    target = homes(name) / f"worker-{i}" / dest.removeprefix("~/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(args.source).is_dir():
      shutil.copytree(args.source, target, dirs_exist_ok=True)
    else:
      shutil.copyfile(args.source, target)


def public(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in ("coordinatorPort", "preemptAt", "zone",
                                                       "project", "queuedResource",
                                                       "sliceIndex", "slices")}


def tpu_vm(args) -> None:
  command = f"compute.tpus.tpu-vm.{args.verb}"
  if args.verb == "create":
    create_node(command, args.name, args, args.version, None)
    print(f"Created tpu [{args.name}].", file=sys.stderr)
  elif args.verb == "describe":
    check_where(command, read_json(vm_path(args.name)), args, "nodes", args.name)
    maybe_preempt(args.name)
    record = check_where(command, read_json(vm_path(args.name)), args, "nodes", args.name)
    repair = STATE / "vms" / f"{args.name}.repair"  # holds N: N describes say REPAIRING
    if repair.exists():
      left = int(repair.read_text() or 0)
      if left > 0:
        record = dict(record, state="REPAIRING")
        repair.write_text(str(left - 1))
      else:
        repair.unlink()
    print(json.dumps(public(record), indent=1))
  elif args.verb == "list":
    records = [read_json(p) for p in sorted((STATE / "vms").glob("*.json"))]
    print(json.dumps([public(r) for r in records if r and r["zone"] == args.zone
                      and r["project"] == args.project], indent=1))
  elif args.verb == "delete":
    check_where(command, read_json(vm_path(args.name)), args, "nodes", args.name)
    delete_node(args.name)
    print(f"Deleted tpu [{args.name}].", file=sys.stderr)
  elif args.verb == "ssh":
    ssh(args)
  elif args.verb == "scp":
    scp(args)


# A queued resource's states as describe shows them: ACCEPTED, WAITING_FOR_RESOURCES
# (FAKE_GCLOUD_QUEUE_POLLS describes), PROVISIONING (its VM CREATING), then ACTIVE (VM
# READY) or, with FAKE_GCLOUD_QR_FAIL=FAILED[:N], FAILED (no VM). A preemption makes it
# SUSPENDING (VM deleted), then SUSPENDED; delete makes it DELETING for
# FAKE_GCLOUD_DELETE_POLLS describes (default 0: gone at once, as a delete that waits)
# before it is gone.
def advance_queued(record: dict, args, name: str) -> dict:
  state = record["state"]["state"]
  nodes = node_ids(record)
  nxt = state
  if state == "ACCEPTED":
    nxt = "WAITING_FOR_RESOURCES" if record["polls"] > 0 else "PROVISIONING"
  elif state == "WAITING_FOR_RESOURCES":
    record["polls"] -= 1
    nxt = "WAITING_FOR_RESOURCES" if record["polls"] > 0 else "PROVISIONING"
  elif state == "PROVISIONING":
    if os.environ.get("FAKE_GCLOUD_QR_FAIL", "").startswith("FAILED") and \
        allowed("FAKE_GCLOUD_QR_FAIL"):
      for node in nodes:
        delete_node(node)
      nxt = "FAILED"
    else:
      for node in nodes:
        vm = read_json(vm_path(node))
        if vm is not None:
          vm["state"] = "READY"
          write_json(vm_path(node), vm)
      nxt = "ACTIVE"
  elif state == "SUSPENDING":
    nxt = "SUSPENDED"
  elif state == "DELETING":
    record["deletePolls"] -= 1
    if record["deletePolls"] < 0:
      qr_path(name).unlink(missing_ok=True)
      return {}
  if nxt == "PROVISIONING" and state != "PROVISIONING":
    for i, node in enumerate(nodes):
      if not vm_path(node).exists():
        create_node("compute.tpus.queued-resources.describe", node, record["args"],
                    record["args"].runtime_version, name, state="CREATING",
                    slices=(i, len(nodes), record["coordinatorPort"]) if len(nodes) > 1
                    else None)
  record["state"] = {"state": nxt}
  return record


def queued_resources(args) -> None:
  command = f"compute.tpus.queued-resources.{args.verb}"
  if args.verb == "create":
    kind = os.environ.get("FAKE_GCLOUD_FAIL_CREATE", "").split(":")[0]
    if kind in CREATE_ERRORS and allowed("FAKE_GCLOUD_FAIL_CREATE"):
      fail(command, CREATE_ERRORS[kind].format(zone=args.zone, project=args.project,
                                               name=args.name))
    if (args.node_id is None) == (args.node_count is None) or \
        (args.node_count is None) != (args.node_prefix is None):
      fail(command, "give --node-id, or --node-count with --node-prefix", 2)
    spec = ({"nodeId": args.node_id} if args.node_id else
            {"multisliceParams": {"nodeCount": args.node_count,
                                  "nodeIdPrefix": args.node_prefix}})
    if qr_path(args.name).exists() or any(vm_path(n).exists()
                                          for n in node_ids({"tpu": {"nodeSpec": [spec]}})):
      fail(command, f"ALREADY_EXISTS: Resource 'projects/{args.project}/locations/"
                    f"{args.zone}/queuedResources/{args.name}' already exists")
    try:
      workers_of(args.accelerator_type)
    except ValueError:
      fail(command, f"INVALID_ARGUMENT: unknown accelerator type {args.accelerator_type}")
    write_json(qr_path(args.name), {
        "name": f"projects/{args.project}/locations/{args.zone}/queuedResources/{args.name}",
        "zone": args.zone, "project": args.project, "state": {"state": "ACCEPTED"},
        "tpu": {"nodeSpec": [spec]}, "coordinatorPort": free_port(),
        "polls": int(os.environ.get("FAKE_GCLOUD_QUEUE_POLLS", "0")),
        "create": {k: getattr(args, k.replace("-", "_")) for k in
                   ("accelerator-type", "runtime-version", "spot", "reserved")},
        **({"spot": {}} if args.spot else {}), **({"guaranteed": {"reserved": True}}
                                                   if args.reserved else {})})
    print(f"Create request issued for: [{args.name}]", file=sys.stderr)
  elif args.verb == "describe":
    record = check_where(command, read_json(qr_path(args.name)), args, "queuedResources",
                         args.name)
    for node in node_ids(record):
      if vm_path(node).exists():
        maybe_preempt(node)
    record = read_json(qr_path(args.name))
    record["args"] = argparse.Namespace(
        zone=record["zone"], project=record["project"], spot=record["create"]["spot"],
        reserved=record["create"]["reserved"], preemptible=False,
        accelerator_type=record["create"]["accelerator-type"],
        runtime_version=record["create"]["runtime-version"])
    record = advance_queued(record, args, args.name)
    if not record:
      fail(command, f"NOT_FOUND: Resource 'projects/{args.project}/locations/{args.zone}/"
                    f"queuedResources/{args.name}' was not found")
    del record["args"]
    write_json(qr_path(args.name), record)
    print(json.dumps({k: v for k, v in record.items()
                      if k not in ("zone", "project", "polls", "create", "deletePolls",
                                   "coordinatorPort")},
                     indent=1))
  elif args.verb == "list":
    records = [read_json(p) for p in sorted((STATE / "qrs").glob("*.json"))]
    print(json.dumps([r for r in records if r and r["zone"] == args.zone], indent=1))
  elif args.verb == "delete":
    record = check_where(command, read_json(qr_path(args.name)), args, "queuedResources",
                         args.name)
    nodes = [n for n in node_ids(record) if vm_path(n).exists()]
    if nodes and not args.force:
      fail(command, f"FAILED_PRECONDITION: queued resource {args.name} has nodes; use --force")
    for node in nodes:
      delete_node(node)
    record["state"] = {"state": "DELETING"}
    record["deletePolls"] = int(os.environ.get("FAKE_GCLOUD_DELETE_POLLS", "0"))
    write_json(qr_path(args.name), record)
    print(f"Deleted queued resource [{args.name}].", file=sys.stderr)


def network_flags(p) -> None:
  """The create flags that attach a VM and name who it runs as (recorded, not modelled)."""
  p.add_argument("--internal-ips", action="store_true")
  for flag in ("--network", "--subnetwork", "--service-account", "--scopes", "--labels"):
    p.add_argument(flag)


def parser() -> argparse.ArgumentParser:
  def where(p):
    p.add_argument("--zone", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--format", choices=["json"])
    p.add_argument("--quiet", "-q", action="store_true")
    return p

  top = argparse.ArgumentParser(prog="gcloud", allow_abbrev=False)
  groups = top.add_subparsers(dest="group", required=True)
  compute = groups.add_parser("compute", allow_abbrev=False).add_subparsers(
      dest="compute", required=True)
  tpus = compute.add_parser("tpus", allow_abbrev=False).add_subparsers(dest="kind",
                                                                        required=True)
  vm = tpus.add_parser("tpu-vm", allow_abbrev=False).add_subparsers(dest="verb",
                                                                     required=True)
  create = where(vm.add_parser("create", allow_abbrev=False))
  create.add_argument("name")
  create.add_argument("--accelerator-type", required=True)
  create.add_argument("--version", required=True)
  create.add_argument("--async", action="store_true")
  network_flags(create)
  capacity = create.add_mutually_exclusive_group()
  for flag in ("--spot", "--reserved", "--preemptible"):
    capacity.add_argument(flag, action="store_true")
  for verb in ("describe", "delete"):
    where(vm.add_parser(verb, allow_abbrev=False)).add_argument("name")
  where(vm.add_parser("list", allow_abbrev=False))
  ssh_parser = where(vm.add_parser("ssh", allow_abbrev=False))
  ssh_parser.add_argument("name")
  ssh_parser.add_argument("--worker", default="0")
  ssh_parser.add_argument("--internal-ip", action="store_true")
  ssh_parser.add_argument("--command")
  scp_parser = where(vm.add_parser("scp", allow_abbrev=False))
  scp_parser.add_argument("source")
  scp_parser.add_argument("destination")
  scp_parser.add_argument("--worker", default="0")
  scp_parser.add_argument("--internal-ip", action="store_true")
  scp_parser.add_argument("--recurse", action="store_true")

  qr = tpus.add_parser("queued-resources", allow_abbrev=False).add_subparsers(
      dest="verb", required=True)
  create = where(qr.add_parser("create", allow_abbrev=False))
  create.add_argument("name")
  create.add_argument("--node-id")
  create.add_argument("--node-count", type=int)
  create.add_argument("--node-prefix")
  create.add_argument("--accelerator-type", required=True)
  create.add_argument("--runtime-version", required=True)
  create.add_argument("--async", action="store_true")
  network_flags(create)
  capacity = create.add_mutually_exclusive_group()
  for flag in ("--spot", "--reserved", "--guaranteed"):
    capacity.add_argument(flag, action="store_true")
  until = create.add_mutually_exclusive_group()
  until.add_argument("--valid-until-duration")
  until.add_argument("--valid-until-time")
  for verb in ("describe", "delete"):
    p = where(qr.add_parser(verb, allow_abbrev=False))
    p.add_argument("name")
    if verb == "delete":
      p.add_argument("--force", action="store_true")
  where(qr.add_parser("list", allow_abbrev=False))
  return top


def main() -> None:
  if len(sys.argv) == 3 and sys.argv[1] == "__fake-venv":
    fake_venv(sys.argv[2])
    return
  if not os.environ.get("FAKE_GCLOUD_STATE"):
    sys.exit("fake gcloud: set FAKE_GCLOUD_STATE to a folder")
  STATE.mkdir(parents=True, exist_ok=True)
  with open(STATE / "calls.jsonl", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
  args = parser().parse_args()
  (tpu_vm if args.kind == "tpu-vm" else queued_resources)(args)


if __name__ == "__main__":
  main()
