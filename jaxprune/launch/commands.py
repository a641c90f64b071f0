"""The ``jaxprune-tpu`` subcommands: create, setup, run, babysit, status, logs, ssh, delete.

Each takes the TPU's name, the parsed :class:`Options`, the resolved settings and a
:class:`~jaxprune.launch.runner.Runner`, and returns an exit status; user errors are
``LaunchError``s. Under ``--dry-run`` the answers of the look-ups a command makes
(``describe``) are assumed: the VM does not exist yet, then is READY with the workers
of ``--accelerator-type``; a queued resource only when ``--queued``.

``--num-slices=N`` (multislice): one queued resource NAME whose slices are the TPU VMs
``NAME-0`` ... ``NAME-<N-1>``, each of ``--accelerator-type``. Every command that takes
the flag acts on all of them: the job runs on every worker of every slice (worker
numbers count slice after slice), with JAX's multislice environment
(``remote.multislice_env``); the data axis of the mesh crosses the slices
(``sharding.make_mesh``).

Example::

  opts = Options(accelerator_type="v4-32", capacity="spot", queued=True)
  create("pod", opts, settings.load({"project": "p", "zone": "z"}), Runner(dry_run=True))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import re
import shlex
import sys
import tempfile
import threading
import time

from jaxprune.launch import accelerators
from jaxprune.launch import gcloud
from jaxprune.launch import remote
from jaxprune.launch import source
from jaxprune.launch import workers
from jaxprune.launch.runner import Result, Runner, gcloud_error
from jaxprune.launch.settings import LaunchError, Settings

__all__ = ["Options", "create", "setup", "run", "babysit", "status", "logs", "stop", "ssh",
           "delete", "COMMANDS"]

# States of a TPU VM that will not run anything again: babysit re-creates it.
GONE = ("PREEMPTED", "TERMINATED", "STOPPED", "SUSPENDED")


@dataclasses.dataclass
class Options:
  """What the flags say, beyond the settings (see cli.py for each flag's help)."""
  accelerator_type: str | None = None
  runtime_version: str | None = None
  capacity: str = "on-demand"
  queued: bool = False
  valid_until: str | None = None
  local: bool = False
  ref: str | None = None
  extras: str = "gcs"
  jax_version: str | None = None
  retries: int = 5
  setup_retries: int = 3
  create_retries: int = 8
  retry_wait: float = 60.0
  poll: float = 30.0
  yes: bool = False
  run_name: str | None = None
  logs_dir: str = "logs"
  worker: str | None = None
  grace: int = remote.STOP_GRACE_S
  detach: bool = False
  restart: bool = False
  follow: bool = False
  env: list[str] = dataclasses.field(default_factory=list)
  network: gcloud.Network = gcloud.Network()
  internal_ip: bool = False
  num_slices: int = 1
  # Everything after `--`: the jaxprune flags (run, babysit) or a command (ssh).
  rest: list[str] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.num_slices < 1:
      raise LaunchError(f"--num-slices={self.num_slices}: expected 1 or more")
    if self.num_slices > 1:
      self.queued = True  # multislice exists only as a queued resource


def _say(message: str) -> None:
  print(f"jaxprune-tpu: {message}", file=sys.stderr, flush=True)


def _where(s: Settings, opts: Options | None = None) -> gcloud.Where:
  """Project and zone from the settings; internal IPs for ssh/scp from the flags."""
  return gcloud.Where(*s.require("project", "zone"),
                      internal_ip=bool(opts and (opts.internal_ip or opts.network.internal_ips)))


def _accelerator(opts: Options, s: Settings) -> accelerators.Accelerator:
  return accelerators.parse(opts.accelerator_type or s.require("accelerator_type")[0])


def describe(name: str, where: gcloud.Where, runner: Runner) -> dict:
  """The VM's description (``state`` "NOT_FOUND" when there is none, or under --dry-run)."""
  result = runner.run(gcloud.describe_vm(name, where), dry=Result(0, "{}"))
  if result.ok:
    return result.json() or {"state": "NOT_FOUND"}
  if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
    return {"state": "NOT_FOUND"}
  raise LaunchError(f"gcloud could not describe {name}: {gcloud_error(result.stderr)}")


def _slices(name: str, opts: Options) -> list[str]:
  return gcloud.slice_names(name, opts.num_slices)


def _states_text(nodes: list[str], states: list[str]) -> str:
  """``VM READY``, or per slice ``VMs pod-0 READY, pod-1 NOT_FOUND``."""
  if len(nodes) == 1:
    return f"VM {states[0]}"
  return "VMs " + ", ".join(f"{n} {st}" for n, st in zip(nodes, states))


def _queued_state(name: str, where: gcloud.Where, runner: Runner, dry_exists: bool) -> str:
  result = runner.run(gcloud.describe_queued(name, where),
                      dry=Result(0, '{"state": {"state": "ACTIVE"}}') if dry_exists
                      else Result(1, "", "NOT_FOUND"))
  if not result.ok:
    return "NOT_FOUND"
  return ((result.json() or {}).get("state") or {}).get("state", "UNKNOWN")


# Queued-resource and VM states babysit waits through, and those it replaces.
WAIT_QUEUED = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING", "SUSPENDING",
               "DELETING")
WAIT_VM = ("CREATING", "STARTING", "REPAIRING", "RESTARTING", "REIMAGING")
GONE_QUEUED = ("SUSPENDED", "FAILED")


def _wait_until_active(name: str, where: gcloud.Where, opts: Options, runner: Runner) -> None:
  said = None
  while True:
    state = _queued_state(name, where, runner, dry_exists=True)
    if state == "ACTIVE":
      return
    if state not in WAIT_QUEUED or state in ("SUSPENDING", "DELETING"):
      raise LaunchError(f"queued resource {name} is {state}; see `gcloud compute tpus "
                        f"queued-resources describe {name} --zone={where.zone}`"
                        + ("; `jaxprune-tpu babysit` deletes and re-creates it"
                           if state in GONE_QUEUED else ""))
    if state != said:
      _say(f"{name}: queued resource {state}; waiting (checks every {opts.poll:.0f} s)")
      said = state
    time.sleep(opts.poll)


def _create_failure(stderr: str, acc: accelerators.Accelerator, where: gcloud.Where
                    ) -> str | None:
  """A one-line reason when retrying cannot help (quota, permission, zone); else None."""
  text, detail = stderr.lower(), gcloud_error(stderr)
  if "quota" in text:
    return (f"not enough {acc.name} quota in {where.zone} ({detail}): request more on the "
            "console's IAM & Admin > Quotas page, or use another zone")
  if "permission_denied" in text or "permission denied" in text:
    return (f"no permission to create TPUs in project {where.project} ({detail}): the "
            "account needs roles/tpu.admin (and to act as the VMs' service account)")
  if "location" in text and ("not found" in text or "invalid" in text):
    return (f"zone {where.zone} is unknown or offers no Cloud TPU to project "
            f"{where.project} ({detail})")
  return None


def _request(name: str, opts: Options, s: Settings, runner: Runner) -> None:
  """Issues the create (a VM, or a queued resource for it): capacity shortages
  (RESOURCE_EXHAUSTED) are retried with exponential backoff, either way; quota,
  permission and zone errors end at once with one line."""
  where, acc = _where(s, opts), _accelerator(opts, s)
  runtime = opts.runtime_version or acc.runtime_version
  if opts.queued:
    args = gcloud.create_queued(name, where, acc.name, runtime, opts.capacity,
                                opts.valid_until, network=opts.network,
                                node_count=opts.num_slices)
  else:
    args = gcloud.create_vm(name, where, acc.name, runtime, opts.capacity,
                            network=opts.network)
  tries = 1 + opts.create_retries
  for attempt in range(tries):
    result = runner.run(args)
    if result.ok:
      return
    if opts.queued and "ALREADY_EXISTS" in result.stderr:
      _say(f"{name}: the queued resource exists already; waiting for it")
      return
    reason = _create_failure(result.stderr, acc, where)
    if reason:
      raise LaunchError(reason)
    exhausted = "RESOURCE_EXHAUSTED" in result.stderr or \
        "no more capacity" in result.stderr.lower()
    if exhausted and attempt + 1 < tries:
      wait = min(opts.retry_wait * 2 ** attempt, 900.0)
      _say(f"{name}: no {acc.name} capacity in {where.zone} (RESOURCE_EXHAUSTED); "
           f"retry {attempt + 1}/{tries - 1} in {wait:.0f} s")
      time.sleep(wait)
      continue
    if exhausted:
      hint = (f"gave up after {tries} tries; try later or another zone" if opts.queued else
              f"gave up after {tries} tries; try --queued (waits in Cloud TPU's queue), "
              "--spot or another zone")
      raise LaunchError(f"no {acc.name} capacity in {where.zone} (RESOURCE_EXHAUSTED): {hint}")
    raise LaunchError(f"gcloud could not create {name}: {gcloud_error(result.stderr)}")


def create(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """Creates the TPU VM (or a queued resource for it), or reuses a READY one."""
  where, acc = _where(s, opts), _accelerator(opts, s)
  if opts.valid_until and not opts.queued:
    raise LaunchError("--valid-until applies to queued resources: add --queued")
  nodes = _slices(name, opts)
  found = [describe(n, where, runner) for n in nodes]
  if all(f["state"] == "READY" for f in found):
    for n, f in zip(nodes, found):
      if f.get("acceleratorType") not in (None, acc.name):
        raise LaunchError(f"{n} exists as a {f['acceleratorType']}, not a {acc.name}: "
                          "delete it first or pick another name")
    _say(f"{name}: already READY, reusing it")
    return 0
  for n, f in zip(nodes, found):
    if f["state"] != "NOT_FOUND":
      raise LaunchError(f"{n} exists and is {f['state']}: `jaxprune-tpu delete {name}` "
                        "first (babysit does this by itself)")
  runtime = opts.runtime_version or acc.runtime_version
  _request(name, opts, s, runner)
  if opts.queued:
    _wait_until_active(name, where, opts, runner)
  slices = f"{opts.num_slices} slices of " if opts.num_slices > 1 else ""
  _say(f"{name}: {slices}{acc.name} {'would be created' if runner.dry_run else 'created'} "
       f"({acc.hosts} worker{'s' * (acc.hosts > 1)}{' each' * bool(slices)}, {runtime}, "
       f"{opts.capacity}{', queued' if opts.queued else ''})")
  return 0


def _ensure_ready(name: str, opts: Options, s: Settings, runner: Runner) -> None:
  """babysit's way to a READY VM, following the VM's and its queued resource's states.

  It waits through a queued resource's ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING,
  SUSPENDING and DELETING and a VM's CREATING, STARTING and REPAIRING, never deleting
  them; it deletes a resource that is SUSPENDED or FAILED, or a VM that is PREEMPTED,
  TERMINATED or STOPPED, waits until it is gone, and creates it again.
  """
  if runner.dry_run:
    create(name, opts, s, runner)
    return
  where, said, nodes = _where(s, opts), None, _slices(name, opts)
  while True:
    vms = [describe(n, where, runner)["state"] for n in nodes]
    if all(vm == "READY" for vm in vms):
      return
    queued = _queued_state(name, where, runner, dry_exists=opts.queued)
    state = _states_text(nodes, vms) + (f", queued resource {queued}"
                                        if queued != "NOT_FOUND" else "")
    if any(vm in WAIT_VM for vm in vms) or queued in WAIT_QUEUED or (
        queued == "ACTIVE" and "NOT_FOUND" in vms):
      if state != said:
        _say(f"{name}: {state}; waiting (checks every {opts.poll:.0f} s)")
      said = state
      time.sleep(opts.poll)
    elif any(vm in GONE for vm in vms) or queued in GONE_QUEUED:
      _say(f"{name}: {state}: deleting it to create it again")
      _delete(name, nodes, where, runner, queued=queued != "NOT_FOUND")
      said = None
    elif all(vm == "NOT_FOUND" for vm in vms) and queued == "NOT_FOUND":
      _request(name, opts, s, runner)
      said = None
    else:
      raise LaunchError(f"{name}: {state}, a state babysit does not know; see `jaxprune-tpu "
                        f"status {name}`")


def setup(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """Puts jaxprune and a venv with ``jax[tpu]`` on every worker; a no-op when up to date."""
  where = _where(s, opts)
  if opts.local == bool(opts.ref):
    raise LaunchError("setup needs one of --local (this checkout) or --ref=GIT_REF")
  jax_version = opts.jax_version or source.jax_version()
  if opts.local:
    tarball = source.local_tarball(source.checkout_root())
    stamp = source.stamp(tarball, jax_version, opts.extras)
  else:
    repo, = s.require("repo")
    stamp = source.stamp(f"{repo}@{opts.ref}", jax_version, opts.extras)
  nodes = _slices(name, opts)
  checks = _each(runner, nodes, lambda n: runner.run(
      gcloud.ssh(n, where, "all", remote.check_script(stamp)), dry=Result(1)))
  todo = [n for n, check in zip(nodes, checks) if not check.ok]
  if not todo:
    _say(f"{name}: jaxprune {stamp} already installed on every worker")
    return 0
  if opts.local:
    local = Path(tempfile.gettempdir()) / f"jaxprune-src-{stamp}.tar.gz"
    if not runner.dry_run:
      local.write_bytes(tarball)
    for n, copied in zip(todo, _each(runner, todo, lambda n: runner.run(
        gcloud.scp(str(local), n, remote.TARBALL, where)))):
      if not copied.ok:
        raise LaunchError(f"could not copy the code to {n}: {gcloud_error(copied.stderr)}")
  script = remote.install_script(stamp, jax_version, opts.extras, local=opts.local,
                                 repo=None if opts.local else repo, ref=opts.ref)
  installs = _each(runner, todo, lambda n: runner.run(gcloud.ssh(n, where, "all", script),
                                                      stream=True))
  failed = [n for n, result in zip(todo, installs) if not result.ok]
  if failed:
    raise LaunchError(f"setup failed on {', '.join(failed)} (the output is above)")
  _say(f"{name}: jaxprune {stamp} installed on every worker")
  return 0


def _each(runner: Runner, items: list, fn) -> list:
  """``fn(item)`` for every item, in parallel threads (in order under --dry-run, so
  that the printed commands come in a fixed order); the results in item order."""
  if runner.dry_run or len(items) == 1:
    return [fn(item) for item in items]
  results: dict[int, object] = {}
  threads = [threading.Thread(target=lambda i, item: results.__setitem__(i, fn(item)),
                              args=(i, item)) for i, item in enumerate(items)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return [results[i] for i in range(len(items))]


def _workdir(flags: list[str]) -> str | None:
  for i, flag in enumerate(flags):
    if flag.startswith("--workdir="):
      return flag.split("=", 1)[1]
    if flag == "--workdir" and i + 1 < len(flags):
      return flags[i + 1]
  return None


def _mode(flags: list[str]) -> str:
  modes = [f.split("=", 1)[1] for f in flags if f.startswith("--mode=")]
  return modes[-1] if modes else "demo"


def job_flags(name: str, opts: Options, s: Settings) -> list[str]:
  """The job's flags: a gs:// ``--workdir`` (``gs://BUCKET/jaxprune/NAME/MODE`` if none).

  Example: ``job_flags("pod", Options(rest=["--mode=prune"]), s)[-1]`` is
  ``"--workdir=gs://b/jaxprune/pod/prune"`` when the bucket is ``b``.
  """
  flags = list(opts.rest)
  workdir = _workdir(flags)
  if workdir is None:
    bucket, = s.require("bucket")
    bucket = bucket.removeprefix("gs://").strip("/")
    flags.append(f"--workdir=gs://{bucket}/jaxprune/{name}/{_mode(flags)}")
  elif not workdir.startswith("gs://"):
    raise LaunchError(f"--workdir={workdir}: a TPU job's work directory must be gs://... "
                      "(workers share no disk, and a preempted VM loses its own)")
  return flags


def _ready(name: str, where: gcloud.Where, opts: Options, s: Settings,
           runner: Runner) -> list[dict]:
  """The descriptions of the slices (one unless --num-slices), all READY, else a
  one-line error. Under --dry-run: READY with ``--accelerator-type``'s workers."""
  nodes = _slices(name, opts)
  if runner.dry_run:
    hosts = _accelerator(opts, s).hosts
    return [{"state": "READY", "networkEndpoints": [
        {"ipAddress": f"<internal IP of {n} worker {i}>"} for i in range(hosts)]}
        for n in nodes]
  found = [describe(n, where, runner) for n in nodes]
  for n, f in zip(nodes, found):
    if f["state"] != "READY":
      raise LaunchError(f"{n} is {f['state']}, not READY" + (
          f": `jaxprune-tpu create {name}` first" if f["state"] == "NOT_FOUND" else
          f"; `jaxprune-tpu babysit {name}` re-creates it and resumes"))
  return found


def _targets(name: str, where: gcloud.Where, opts: Options, s: Settings, runner: Runner
             ) -> list[tuple[str, int]]:
  """Every worker of every slice, in process order: ``(VM name, worker index)``."""
  return [(n, i) for n, found in zip(_slices(name, opts), _ready(name, where, opts, s, runner))
          for i in range(len(found.get("networkEndpoints") or [{}]))]


def _run_name(opts: Options) -> str:
  if not opts.run_name:
    opts.run_name = time.strftime("%Y%m%d-%H%M%S")
  return opts.run_name


def _job_env(opts: Options) -> dict[str, str]:
  env = {}
  for item in opts.env:
    key, eq, value = item.partition("=")
    if not eq or not key.replace("_", "a").isalnum() or key[0].isdigit():
      raise LaunchError(f"--env={item}: expected KEY=VALUE")
    env[key] = value
  return env


def run(name: str, opts: Options, s: Settings, runner: Runner, marker: str | None = None
        ) -> int:
  """Starts the jaxprune job on every worker, detached from the ssh sessions; streams
  the logs and returns the exit status of the first worker that failed (``--detach``:
  returns once the job started).

  The launcher can be killed or lose its network meanwhile: the job goes on (`logs
  --follow`, `status`, `stop` reach it; the same `run` command re-attaches)."""
  flags, where = job_flags(name, opts, s), _where(s, opts)
  env = _job_env(opts)
  nodes, found = _slices(name, opts), _ready(name, where, opts, s, runner)
  targets = [(n, i) for n, f in zip(nodes, found)
             for i in range(len(f.get("networkEndpoints") or [{}]))]
  count = len(targets)
  run_name = _run_name(opts)
  log_dir = Path(opts.logs_dir) / name / run_name
  workdir = _workdir(flags)
  coordinator = (found[0].get("networkEndpoints") or [{}])[0].get("ipAddress", "")

  def script(i: int) -> str:
    slice_env = {} if len(nodes) == 1 else remote.multislice_env(
        nodes.index(targets[i][0]), len(nodes), coordinator)
    return remote.job_script(
        flags, run_name, grace_s=opts.grace, env={**slice_env, **env}, restart=opts.restart,
        detach=opts.detach, log_copy=f"{workdir.rstrip('/')}/logs/worker-{i}.log")

  outcome = workers.run_all(runner, targets, where, script, log_dir, grace_s=opts.grace,
                            marker=marker, run_name=run_name)
  if outcome.failed is None:
    if opts.detach and not runner.dry_run:
      _say(f"{name}: job {run_name} started on {count} workers, detached; follow it with "
           f"`jaxprune-tpu logs {name} --follow`, stop it with `jaxprune-tpu stop {name}`")
    elif not runner.dry_run:
      _say(f"{name}: the job ended well on {count} workers; logs in {log_dir} and "
           f"{workdir.rstrip('/')}/logs")
    return 0
  i, code = outcome.failed, outcome.returncodes[outcome.failed]
  why = {workers.PREEMPTED_EXIT_CODE: "preempted; the same command resumes",
         workers.SSH_LOST_EXIT_CODE: "lost the ssh connection (preempted VM?)"}.get(code)
  last = outcome.last_lines[i]
  print(f"jaxprune-tpu: error: worker {i} of {name} exited with status {code}"
        + (f" ({why})" if why else "") + "; the other workers were stopped; "
        + f"log: {log_dir / f'worker-{i}.log'}" + (f"; last line: {last}" if last else ""),
        file=sys.stderr, flush=True)
  return code


def _on_workers(name: str, opts: Options, s: Settings, runner: Runner, script: str
                ) -> list[Result]:
  """``script`` on the chosen workers (``--worker``, default all), one ssh each, in
  parallel; their results in worker order."""
  where = _where(s, opts)
  targets = _targets(name, where, opts, s, runner)
  chosen = targets if (opts.worker or "all") == "all" else [targets[_worker(opts, targets)]]
  return _each(runner, chosen, lambda t: runner.run(gcloud.ssh(t[0], where, str(t[1]), script),
                                                    dry=Result(0, "")))


def _worker(opts: Options, targets: list) -> int:
  """``--worker=i`` as an index into ``targets``, checked."""
  if not opts.worker.isdigit() or int(opts.worker) >= len(targets):
    raise LaunchError(f"--worker={opts.worker}: expected all or a number below {len(targets)}")
  return int(opts.worker)


def stop(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """SIGTERM to the job on every worker (it saves a checkpoint and exits 75), SIGKILL
  after ``--grace`` seconds; prints each worker's exit status."""
  results = _on_workers(name, opts, s, runner, remote.stop_script(opts.grace))
  for i, result in enumerate([] if runner.dry_run else results):
    print(f"worker {i}: " + (result.stdout.strip().splitlines() or ["?"])[-1]
          if result.ok else f"worker {i}: unreachable ({gcloud_error(result.stderr)})")
  return 0 if all(r.ok for r in results) else 1


_PROGRESS = re.compile(r"(\d+)/(\d+) \[[^\]]*?loss=([-+.\deE]+|nan|inf)")


def _job_status(text: str) -> str:
  """``running``/``exit N``, with the run name and the last step and loss logged."""
  fields = dict(line.split(": ", 1) for line in text.splitlines()[:2] if ": " in line)
  line = f"{fields.get('state', '?')} (run {fields.get('run', '?')})"
  log = text.split("log:\n", 1)[-1].replace("\r", "\n")
  steps = _PROGRESS.findall(log)
  if steps:
    step, total, loss = steps[-1]
    line += f", step {step}/{total}, loss {loss}"
  return line
def babysit(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """create + setup + run until the job succeeds: after a preemption (VM gone, or the job's
  exit code 75) the VM is re-created and the same job resumes from its gs:// workdir."""
  where = _where(s, opts)
  job_flags(name, opts, s)  # bad flags fail before anything is created
  _run_name(opts)
  tries = opts.retries + 1
  for attempt in range(1, tries + 1):
    _ensure_ready(name, opts, s, runner)
    for setup_try in range(opts.setup_retries + 1):
      try:
        setup(name, opts, s, runner)
        break
      except LaunchError as e:
        if setup_try == opts.setup_retries:
          raise
        _say(f"{name}: setup failed ({e}); retry {setup_try + 1}/{opts.setup_retries} "
             f"in {opts.retry_wait:.0f} s")
        time.sleep(opts.retry_wait)
    code = run(name, opts, s, runner, marker=f"attempt {attempt}/{tries}")
    if code == 0 or runner.dry_run:
      return code
    nodes = _slices(name, opts)
    states = [describe(n, where, runner)["state"] for n in nodes]
    if code not in (workers.PREEMPTED_EXIT_CODE, workers.SSH_LOST_EXIT_CODE,
                    workers.PEER_LOST_EXIT_CODE) and all(st == "READY" for st in states):
      return code  # the job itself failed: retrying would fail again
    _say(f"{name}: attempt {attempt}/{tries} interrupted ({_states_text(nodes, states)}, "
         f"exit status {code}); "
         + ("resuming" if attempt < tries else "no tries left"))
  raise LaunchError(f"{name}: the job did not finish in {tries} tries (--retries={opts.retries})")


def status(name: str | None, opts: Options, s: Settings, runner: Runner) -> int:
  """One line per TPU VM (or the named one), with its queued resource and latest logs."""
  where = _where(s, opts)
  if name is None:
    result = runner.run(gcloud.list_vms(where), dry=Result(0, "[]"))
    if not result.ok:
      raise LaunchError(f"gcloud could not list TPU VMs: {gcloud_error(result.stderr)}")
    nodes = result.json() or []
  else:
    nodes = [dict(describe(n, where, runner), name=n) for n in _slices(name, opts)]
  for node in nodes:
    short = node.get("name", "").rsplit("/", 1)[-1]
    queued = _queued_state(short if name is None or opts.num_slices == 1 else name, where,
                           runner, dry_exists=opts.queued)
    if node.get("state") == "NOT_FOUND":
      print(f"{short}: not found in {where.zone}" if queued == "NOT_FOUND" else
            f"{short}: no TPU VM yet, queued resource {queued}")
      continue
    sched = node.get("schedulingConfig") or {}
    capacity = "spot" if sched.get("spot") or sched.get("preemptible") else \
        "reserved" if sched.get("reserved") else "on-demand"
    line = (f"{short}: {node.get('state')} {node.get('acceleratorType')} "
            f"{len(node.get('networkEndpoints') or [])} workers "
            f"{node.get('runtimeVersion')} {capacity}")
    if queued != "NOT_FOUND":
      line += f", queued resource {queued}"
    runs = sorted((Path(opts.logs_dir) / (name or short)).glob("*/worker-0.log"))
    if runs:
      line += f", latest logs {runs[-1].parent}"
    print(line)
  if name is not None and all(node.get("state") == "READY" for node in nodes):
    targets = _targets(name, where, opts, s, runner)
    for i, result in enumerate(_on_workers(name, opts, s, runner, remote.status_script())):
      where_i = f" ({targets[i][0]} worker {targets[i][1]})" if opts.num_slices > 1 else ""
      print(f"  worker {i}{where_i}: " + (_job_status(result.stdout) if result.ok else
                                           f"unreachable ({gcloud_error(result.stderr)})"))
  return 0


def logs(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """The job's log from the workers (worker 0, ``--worker=i`` or ``all``); ``--follow``
  streams it until the job ends. When a worker cannot be reached (the VM is gone), the
  copy that ``run`` streamed into ``--logs-dir`` is shown instead."""
  worker = opts.worker or "0"
  where = _where(s, opts)
  if all([describe(n, where, runner)["state"] == "READY" for n in _slices(name, opts)]) \
      or runner.dry_run:
    opts.worker = worker
    script = remote.logs_script(follow=opts.follow)
    if opts.follow or worker != "all":
      targets = _targets(name, where, opts, s, runner)
      chosen = range(len(targets)) if worker == "all" else [_worker(opts, targets)]
      procs = [runner.start(gcloud.ssh(targets[i][0], where, str(targets[i][1]), script))
               for i in chosen]
      if runner.dry_run:
        return 0
      streams = [threading.Thread(target=_prefixed, args=(p.stdout, f"[worker {i}] "
                                                          if len(chosen) > 1 else ""))
                 for i, p in zip(chosen, procs)]
      for t in streams:
        t.start()
      for t in streams:
        t.join()
      if all(p.wait() == 0 for p in procs):
        return 0
    else:
      results = _on_workers(name, opts, s, runner, script)
      if all(r.ok for r in results):
        for i, r in enumerate(results):
          print(f"==> worker {i} <==")
          sys.stdout.write(r.stdout)
        return 0
  return _local_logs(name, opts, worker)


def _prefixed(stream, prefix: str) -> None:
  for raw in iter(stream.readline, b""):
    sys.stdout.write(prefix + raw.decode("utf-8", "replace"))
    sys.stdout.flush()


def _local_logs(name: str, opts: Options, worker: str) -> int:
  """The logs ``run`` streamed into ``--logs-dir`` (the latest run, or --run-name)."""
  root = Path(opts.logs_dir) / name
  runs = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
  if opts.run_name:
    runs = [p for p in runs if p.name == opts.run_name]
  if not runs:
    raise LaunchError(f"no logs of {name}" + (f" run {opts.run_name}" if opts.run_name
                                               else "") + f" on its workers or under {root}")
  _say(f"{name}: showing the copy streamed to {runs[-1]} (the workers did not answer)")
  files = sorted(runs[-1].glob("worker-*.log"), key=lambda p: int(p.stem.split("-")[1]))
  if worker != "all":
    files = [f for f in files if f.stem == f"worker-{worker}"]
    if not files:
      raise LaunchError(f"no log of worker {worker} in {runs[-1]}")
  for f in files:
    if len(files) > 1:
      print(f"==> {f} <==")
    sys.stdout.write(f.read_text(errors="replace"))
  return 0


def ssh(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """An ssh session on a worker (default 0), or the command after ``--`` there."""
  command = shlex.join(opts.rest) if opts.rest else None
  args = gcloud.ssh(name, _where(s, opts), opts.worker or "0", command)
  return runner.interactive(args) if command is None else runner.run(args, stream=True).returncode


def _delete(name: str, nodes: list[str], where: gcloud.Where, runner: Runner,
            queued: bool) -> None:
  """Deletes the queued resource ``name`` (and its VMs), or else the VMs ``nodes``."""
  if _queued_state(name, where, runner, dry_exists=queued) != "NOT_FOUND":
    results = [(name, runner.run(gcloud.delete_queued(name, where)))]
  else:
    results = [(n, runner.run(gcloud.delete_vm(n, where))) for n in nodes]
  for n, result in results:
    if not result.ok:
      raise LaunchError(f"gcloud could not delete {n}: {gcloud_error(result.stderr)}")


def delete(name: str, opts: Options, s: Settings, runner: Runner) -> int:
  """Deletes the TPU VM (and its queued resource); asks first unless --yes."""
  where = _where(s, opts)
  if not opts.yes and not runner.dry_run:
    if not sys.stdin.isatty():
      raise LaunchError(f"delete {name}: pass --yes to confirm (no terminal to ask on)")
    answer = input(f"Delete TPU {name} in {where.zone} (project {where.project})? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
      _say("not deleted")
      return 1
  _delete(name, _slices(name, opts), where, runner, queued=opts.queued)
  _say(f"{name}: deleted")
  return 0


COMMANDS = {"create": create, "setup": setup, "run": run, "babysit": babysit,
            "status": status, "logs": logs, "stop": stop, "ssh": ssh, "delete": delete}
