"""One ssh per worker: each worker's output into ``<log_dir>/worker-<i>.log`` (worker 0's
also to the terminal); when one exits non-zero, the others are stopped.

Stopping runs ``remote.stop_script`` on every worker over a new ssh: the jobs run
detached from their ssh sessions (``remote.job_script``), so closing the local ssh
clients leaves them running.

Workers are ``(VM name, worker index)`` pairs in process order; a multislice job's come
slice after slice (``pod-0`` worker 0, 1, ..., then ``pod-1`` ...), and worker *i* in the
messages and log names is the position in that list.

Example::

  outcome = run_all(runner, [("pod", 0), ("pod", 1)], where, job_script(flags),
                    Path("logs/pod/run1"))
  outcome.failed  # None, or the index of the first worker that failed
"""

from __future__ import annotations

import codecs
import dataclasses
from pathlib import Path
import subprocess
import sys
import threading
import time
from typing import Callable, TextIO

from jaxprune.launch import gcloud
from jaxprune.launch import remote
from jaxprune.launch.runner import Runner

__all__ = ["Outcome", "run_all", "PEER_LOST_EXIT_CODE", "PREEMPTED_EXIT_CODE",
           "SSH_LOST_EXIT_CODE"]

# jaxprune's own exit codes (jaxprune.checkpoint / jaxprune.sharding; not imported here:
# they import jax) and ssh's for a connection that broke (e.g. the VM was preempted).
PREEMPTED_EXIT_CODE = 75
PEER_LOST_EXIT_CODE = 4
SSH_LOST_EXIT_CODE = 255
# How many times the other workers are told to stop before their ssh clients are ended.
STOP_TRIES = 3


@dataclasses.dataclass
class Outcome:
  """Exit status of every worker's ssh, and which worker failed first (None: none)."""
  returncodes: list[int]
  failed: int | None
  last_lines: list[str]


def _pump(stream, log: Path, echo: TextIO | None, tail: list[str], index: int) -> None:
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  with open(log, "ab") as f:
    while chunk := stream.read(1 << 16):  # unbuffered: returns what has arrived
      f.write(chunk)
      f.flush()
      text = decoder.decode(chunk)
      if echo is not None:
        echo.write(text)
        echo.flush()
      lines = [l for l in text.replace("\r", "\n").split("\n") if l.strip()]
      if lines:
        tail[index] = lines[-1].strip()


def _first_failure(returncodes: list[int | None]) -> int | None:
  """The worker to blame: one that failed on its own before one that lost a peer."""
  failed = [i for i, rc in enumerate(returncodes) if rc not in (None, 0)]
  own = [i for i in failed if returncodes[i] != PEER_LOST_EXIT_CODE]
  return (own or failed or [None])[0]


def run_all(runner: Runner, targets: list[tuple[str, int]], where: gcloud.Where,
            command: str | Callable[[int], str], log_dir: Path, echo: TextIO | None = None,
            grace_s: int = remote.STOP_GRACE_S, marker: str | None = None,
            run_name: str | None = None) -> Outcome:
  """Runs ``command`` (or ``command(i)`` on worker i) on every worker of ``targets``
  (``(VM name, worker index)`` pairs), one ssh each, and waits for all.

  ``marker`` (e.g. "attempt 2") is written into every log first. ``run_name``: the
  detached job that ``command`` starts; when a worker fails, only that run is stopped
  on the others (not a job of another run that refused to be replaced).

  Example: ``run_all(Runner(dry_run=True), [("pod", 0)], where, "hostname", Path("logs/x"))``.
  """
  echo = echo or sys.stdout
  script = command if callable(command) else (lambda i: command)
  count = len(targets)
  ssh = lambda i: gcloud.ssh(targets[i][0], where, str(targets[i][1]), script(i))  # noqa: E731
  if runner.dry_run:
    for i in range(count):
      runner.start(ssh(i))
    return Outcome([0] * count, None, [""] * count)
  log_dir.mkdir(parents=True, exist_ok=True)
  logs = [log_dir / f"worker-{i}.log" for i in range(count)]
  if marker:
    for log in logs:
      with open(log, "a") as f:
        f.write(f"=== jaxprune-tpu: {marker} ===\n")
  procs = [runner.start(ssh(i)) for i in range(count)]
  tail = [""] * count
  pumps = [threading.Thread(target=_pump, args=(p.stdout, logs[i], echo if i == 0 else None,
                                                tail, i), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()
  failed = None
  while any(p.poll() is None for p in procs):
    failed = _first_failure([p.poll() for p in procs])
    if failed is not None:
      break
    time.sleep(0.2)
  if failed is not None and any(p.poll() is None for p in procs):
    print(f"jaxprune-tpu: worker {failed} exited with status {procs[failed].returncode}; "
          "stopping the others", file=sys.stderr, flush=True)
    # Again while any is left: a job that was still starting escaped the first stop.
    for _ in range(STOP_TRIES):
      stops = [threading.Thread(target=runner.run, args=(
          gcloud.ssh(name, where, "all", remote.stop_script(grace_s, run_name)),))
               for name in dict.fromkeys(name for name, _ in targets)]  # every slice at once
      for t in stops:
        t.start()
      for t in stops:
        t.join()
      deadline = time.time() + grace_s + 10
      while any(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.2)
      if all(p.poll() is not None for p in procs):
        break
    for p in procs:
      if p.poll() is None:
        p.terminate()
        p.wait(timeout=30)
  for t in pumps:
    t.join(timeout=10)
  returncodes = [p.wait() for p in procs]
  return Outcome(returncodes, _first_failure(returncodes) if failed is None else failed, tail)
