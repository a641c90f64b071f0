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
from typing import Sequence

__all__ = ["TARBALL", "PYTHON", "check_script", "install_script", "job_script",
           "stop_script", "job_args"]

VENV = '"$HOME/jaxprune-venv"'
SRC = '"$HOME/jaxprune-src"'
STAMP = '"$HOME/jaxprune-venv/jaxprune-stamp"'
# setup --local copies the tarball here (relative to the home folder).
TARBALL = "jaxprune-src.tar.gz"
# jax >= 0.5 and jaxprune need Python >= 3.11; Ubuntu 22.04 images ship 3.10.
PYTHON = "python3.11"
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
  pip = '"$HOME/jaxprune-venv/bin/pip" install -q'
  return "; ".join([  # one line: --dry-run prints one command per line
      "set -eu",
      f"if {check_script(stamp)}; then echo \"$(hostname): jaxprune {stamp} already "
      "installed\"; exit 0; fi",
      fetch,
      f"command -v {PYTHON} >/dev/null || {{ sudo apt-get update -qq && sudo "
      f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {PYTHON} {PYTHON}-venv; }}",
      f"{PYTHON} -m venv {VENV}",
      f"{pip} --upgrade pip",
      f"{pip} {shlex.quote(f'jax[tpu]=={jax_version}')} {package}",
      f"{pip} --no-deps --force-reinstall {SRC}",
      f"echo {shlex.quote(stamp)} > {STAMP}",
      f"echo \"$(hostname): jaxprune {stamp} installed\"",
  ])


def stop_script(grace_s: int = STOP_GRACE_S) -> str:
  """Stops this worker's jaxprune jobs: SIGTERM, then SIGKILL after ``grace_s`` seconds.

  Example: ``stop_script(5)``.
  """
  pattern = '"$HOME/jaxprune-venv/bin/[j]axprune"'
  return (f"pkill -TERM -f {pattern}; for i in $(seq {grace_s}); do "
          f"pgrep -f {pattern} >/dev/null || break; sleep 1; done; "
          f"pkill -KILL -f {pattern}; true")


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


def job_script(flags: Sequence[str], grace_s: int = STOP_GRACE_S) -> str:
  """Stops stale jobs, frees the TPU (``/tmp/libtpu_lockfile``), then runs the job.

  The job replaces the shell (``exec``): its exit status is the ssh command's.

  Example: ``job_script(["--mode=prune", "--workdir=gs://b/run"])``.
  """
  return (f"{stop_script(grace_s)}; rm -f /tmp/libtpu_lockfile; cd {SRC} && "
          f"exec \"$HOME/jaxprune-venv/bin/jaxprune\" {shlex.join(job_args(flags))}")
