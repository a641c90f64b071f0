"""The bash that runs on every TPU worker: install check, install, job, stop.

Layout on a worker (home folder): the code in ``~/jaxprune-src`` (configs/ included, the
job's working directory), a venv in ``~/jaxprune-venv`` whose ``jaxprune-stamp`` holds
the hash of what was installed (source, jax version, extras): setup is a no-op when it
matches. Stale jobs are found by their command line, ``~/jaxprune-venv/bin/jaxprune``
(the pattern is written ``[j]axprune`` so that it never matches the shell that runs it).

Example::

  job_script(["--mode=prune", "--workdir=gs://b/run"])
  # '... cd "$HOME/jaxprune-src" && exec "$HOME/jaxprune-venv/bin/jaxprune" --mode=prune ...'
"""

from __future__ import annotations

import shlex
from typing import Mapping, Sequence

__all__ = ["TARBALL", "PYTHON", "MEGASCALE_PORT", "multislice_env", "check_script", "install_script", "job_script",
           "stop_script", "status_script", "logs_script", "job_args"]

VENV = '"$HOME/jaxprune-venv"'
SRC = '"$HOME/jaxprune-src"'
STAMP = '"$HOME/jaxprune-venv/jaxprune-stamp"'
# The detached jobs' logs, exit statuses, process group and run name.
JOBS = '"$HOME/jaxprune-jobs"'
# setup --local copies the tarball here (relative to the home folder).
TARBALL = "jaxprune-src.tar.gz"
# jax >= 0.5 and jaxprune need Python >= 3.11; Ubuntu 22.04 images ship 3.10.
PYTHON = "python3.11"
# setup on a fresh VM: how long apt waits for its lock, pip's retries per download, and
# how often a whole pip install is tried.
APT_LOCK_WAIT_S = 600
PIP_RETRIES = 10
INSTALL_TRIES = 3
# The port of the DCN transport between slices (multislice; the one MaxText uses too).
MEGASCALE_PORT = 8080
# What a stale or stopped job gets after SIGTERM (it saves a checkpoint) before SIGKILL.
STOP_GRACE_S = 30


def check_script(stamp: str) -> str:
  """Exits 0 when the worker already has exactly ``stamp`` installed.

  Example: ``check_script("3f2a...")``.
  """
  return f'test "$(cat {STAMP} 2>/dev/null)" = {shlex.quote(stamp)}'


def install_script(stamp: str, jax_version: str, extras: str, *, local: bool,
                   repo: str | None = None, ref: str | None = None) -> str:
  """Installs jaxprune (from the scp'd tarball, or ``repo`` at ``ref``) into the venv.

  Idempotent: does nothing when the stamp matches. ``jax[tpu]`` is pinned to
  ``jax_version`` (the version the project resolves locally).

  Example: ``install_script("3f2a", "0.10.2", "gcs", local=True)``.
  """
  if local:
    fetch = f"rm -rf {SRC} && mkdir -p {SRC} && tar -xzf \"$HOME/{TARBALL}\" -C {SRC}"
  else:
    fetch = (f"rm -rf {SRC} && git clone -q {shlex.quote(repo)} {SRC} && "
             f"git -C {SRC} checkout -q {shlex.quote(ref)}")
  package = '"$HOME/jaxprune-src' + (f"[{extras}]" if extras else "") + '"'
  pip = f'retry "$HOME/jaxprune-venv/bin/pip" install -q --retries {PIP_RETRIES} --timeout 60'
  apt = f"sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"
  return "; ".join([  # one line: --dry-run prints one command per line
      "set -eu",
      # pip retries each download; this retries a whole install that still failed (an
      # index that answered 5xx for a while).
      f'retry() {{ for i in $(seq {INSTALL_TRIES}); do "$@" && return 0; '
      f'echo "$(hostname): failed ($*), try $i/{INSTALL_TRIES}" >&2; sleep 15; done; '
      "return 1; }",
      f"if {check_script(stamp)}; then echo \"$(hostname): jaxprune {stamp} already "
      "installed\"; exit 0; fi",
      fetch,
      # A fresh VM runs unattended-upgrades, which holds apt's lock for minutes: wait.
      f"command -v {PYTHON} >/dev/null || {{ echo \"$(hostname): installing {PYTHON} "
      f"(waiting up to {APT_LOCK_WAIT_S} s for apt's lock if unattended-upgrades holds "
      f"it)\"; {apt} update -qq && {apt} install -y -qq {PYTHON} {PYTHON}-venv; }}",
      f"{PYTHON} -m venv {VENV}",
      f"{pip} --upgrade pip",
      f"{pip} {shlex.quote(f'jax[tpu]=={jax_version}')} {package}",
      f"{pip} --no-deps --force-reinstall {SRC}",
      f"echo {shlex.quote(stamp)} > {STAMP}",
      f"echo \"$(hostname): jaxprune {stamp} installed\"",
  ])


def multislice_env(slice_id: int, num_slices: int, coordinator: str) -> dict[str, str]:
  """The environment a worker of slice ``slice_id`` gets in a multislice job.

  JAX's TPU cluster detection reads these (``MEGASCALE_*``; from the environment, else
  from the VM's ``tpu-env`` metadata, where a multislice queued resource writes them
  too): the process count becomes slices x hosts, the process id ``slice_id`` x hosts +
  the worker's number, the coordinator slice 0's worker 0 (``coordinator``, its internal
  IP). Set explicitly so that the job does not depend on the metadata, as MaxText's
  multihost runner does.

  Example: ``multislice_env(1, 2, "10.0.0.2")["MEGASCALE_SLICE_ID"] == "1"``.
  """
  return {"MEGASCALE_COORDINATOR_ADDRESS": coordinator,
          "MEGASCALE_NUM_SLICES": str(num_slices), "MEGASCALE_SLICE_ID": str(slice_id),
          "MEGASCALE_PORT": str(MEGASCALE_PORT)}


def _running() -> str:
  """A bash function: is this worker's detached job (its process group) alive?"""
  return (f'running() {{ test -f {JOBS}/job.pid && '
          f'kill -0 -- "-$(cat {JOBS}/job.pid)" 2>/dev/null; }}')


def stop_script(grace_s: int = STOP_GRACE_S, run_name: str | None = None) -> str:
  """Stops this worker's detached job: SIGTERM to its process group (jaxprune saves a
  checkpoint and exits 75), SIGKILL after ``grace_s`` seconds; prints its exit status.

  ``run_name``: only when the running job is that run. ``run`` stops its own job on the
  other workers when one fails; a run refused because another is still running (exit
  3) must leave that other job alone.

  Example: ``stop_script(5)``, ``stop_script(5, run_name="r2")``.
  """
  this_run = (f' && [ "$(cat {JOBS}/job.run)" = {shlex.quote(run_name)} ]'
              if run_name is not None else "")
  return "; ".join([
      _running(),
      f'if running{this_run}; then P=$(cat {JOBS}/job.pid); kill -TERM -- "-$P" 2>/dev/null; '
      f'for i in $(seq {grace_s}); do running || break; sleep 1; done; '
      f'if running; then kill -KILL -- "-$P" 2>/dev/null; sleep 1; fi; fi',
      f'R=$(cat {JOBS}/job.run 2>/dev/null || echo none)',
      f'echo "job $R: exit status $(cat {JOBS}/$R.exit 2>/dev/null || echo none)"',
      "true",
  ])


def status_script() -> str:
  """Prints this worker's job: its run name, ``running`` or ``exit N``, its log's tail.

  Example: ``status_script()``.
  """
  return "; ".join([
      _running(),
      f'R=$(cat {JOBS}/job.run 2>/dev/null || echo none)',
      'echo "run: $R"',
      f'if running; then echo "state: running"; else echo "state: exit '
      f'$(cat {JOBS}/$R.exit 2>/dev/null || echo none)"; fi',
      f'echo "log:"; tail -c 4000 {JOBS}/$R.log 2>/dev/null; true',
  ])


def logs_script(follow: bool = False) -> str:
  """Prints this worker's job log (the current run's); ``follow``: until the job ends.

  Example: ``logs_script(follow=True)``.
  """
  follow_part = (f'tail -n +1 -F {JOBS}/$R.log --pid="$(cat {JOBS}/job.pid)" 2>/dev/null'
                 if follow else f"cat {JOBS}/$R.log")
  return "; ".join([
      f'R=$(cat {JOBS}/job.run 2>/dev/null) || {{ echo "no jaxprune job has run here" >&2; '
      "exit 1; }",
      follow_part,
  ])


def job_args(flags: Sequence[str]) -> list[str]:
  """The job's jaxprune flags, with ``--config.coordinator_address=auto`` added.

  A job without ``--config`` gets the config the CLI would use (configs/demo.py for the
  demo, else configs/base.py), so that the override has a config to apply to: every
  mode joins the pod's run (``--mode=export`` and ``augment`` too, to have one writer).

  Example: ``job_args(["--mode=prune"])[-1] == "--config.coordinator_address=auto"``.
  """
  flags = list(flags)
  if not any(f == "--config" or f.startswith("--config=") for f in flags):
    modes = [f.split("=", 1)[1] for f in flags if f.startswith("--mode=")]
    demo = (modes or ["demo"])[-1] == "demo"
    flags.append(f"--config=configs/{'demo' if demo else 'base'}.py")
  if not any(f.startswith("--config.coordinator_address") for f in flags):
    flags.append("--config.coordinator_address=auto")
  return flags


def job_script(flags: Sequence[str], run_name: str, *, grace_s: int = STOP_GRACE_S,
               env: Mapping[str, str] | None = None, restart: bool = False,
               detach: bool = False, log_copy: str | None = None) -> str:
  """Starts the job on this worker detached from the ssh session, then follows its log.

  The job runs under ``setsid nohup`` (its own session and process group, no terminal):
  a closed laptop, a dropped network or Ctrl-C in the launcher ends only the ssh client.
  ``setsid`` rather than tmux or systemd-run: it is on every image, needs no root, and
  one process group is what `stop_script` signals. On the worker the job leaves
  ``~/jaxprune-jobs/<run>.log`` and ``<run>.exit`` (its exit status), and
  ``job.pid``/``job.run`` (the running group and its run name).

  Idempotent: when this run is already running (gcloud retried the ssh command after a
  broken connection, or the launcher was restarted) it attaches instead of starting a
  second copy; another run still running is an error (exit 3) unless ``restart`` (then
  it is stopped first). Without ``detach`` the script streams the log until the job
  ends and exits with the job's status. ``log_copy``: a gs:// path the log is copied to
  every minute and at the end (``<workdir>/logs/worker-<i>.log``).

  Example: ``job_script(["--mode=prune", "--workdir=gs://b/run"], "run1")``.
  """
  log, exit_file = f"{JOBS}/{run_name}.log", f"{JOBS}/{run_name}.exit"
  assignments = [f"{k}={v}" for k, v in (env or {}).items()]
  job = (f'cd {SRC} && env {shlex.join(assignments)} "$HOME/jaxprune-venv/bin/jaxprune" '
         f'{shlex.join(job_args(flags))}' if assignments else
         f'cd {SRC} && "$HOME/jaxprune-venv/bin/jaxprune" {shlex.join(job_args(flags))}')
  copy = (f'"$HOME/jaxprune-venv/bin/python" -c {shlex.quote(_COPY)} {log} '
          f'{shlex.quote(log_copy)} >/dev/null 2>&1' if log_copy else "true")
  # The group leader: ignores SIGTERM's default (a trap, reset in the job: jaxprune gets
  # the signal and saves), records the job's exit status, copies the log.
  wrapper = (f"trap true TERM; ( while sleep {LOG_COPY_EVERY_S}; do {copy}; done ) & "
             f"C=$!; {job}; code=$?; echo $code > {exit_file}; kill $C 2>/dev/null; "
             f"{copy}; exit $code")
  start = (f"rm -f /tmp/libtpu_lockfile {exit_file}; cd; setsid nohup bash -c "
           f"{shlex.quote(wrapper)} >> {log} 2>&1 < /dev/null & "
           f"echo $! > {JOBS}/job.pid; echo {shlex.quote(run_name)} > {JOBS}/job.run")
  other = (f"{stop_script(grace_s)} >/dev/null" if restart else
           f'echo "jaxprune-tpu: job $(cat {JOBS}/job.run) is still running on this worker:'
           ' stop it (jaxprune-tpu stop NAME) or pass --restart" >&2; exit 3')
  lines = [
      f"mkdir -p {JOBS}",
      _running(),
      f'if running && [ "$(cat {JOBS}/job.run)" != {shlex.quote(run_name)} ]; then {other}; '
      "fi",
      f"if running; then echo \"jaxprune-tpu: attaching to the running job "
      f"{run_name}\"; else {start}; fi",
  ]
  if detach:
    lines.append(f'echo "jaxprune-tpu: started {run_name} on $(hostname): log {log}"')
  else:
    lines += [f'tail -n +1 -F {log} --pid="$(cat {JOBS}/job.pid)" 2>/dev/null',
              f'exit "$(cat {exit_file} 2>/dev/null || echo 1)"']
  return "; ".join(lines)


# Copies the job's log to a gs:// path (the venv's python has jaxprune's `paths`).
_COPY = ("import pathlib, sys; from jaxprune import paths; "
         "paths.upload(pathlib.Path(sys.argv[1]), paths.path(sys.argv[2]))")
LOG_COPY_EVERY_S = 60
