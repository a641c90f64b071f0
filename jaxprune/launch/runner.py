"""Runs gcloud commands, or under ``--dry-run`` prints them (one per line, shell-quoted)
and runs none.

Example::

  runner = Runner(dry_run=True)
  runner.run(["gcloud", "compute", "tpus", "tpu-vm", "list"])  # prints the command
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from typing import Sequence, TextIO

from jaxprune.launch.settings import LaunchError

__all__ = ["Result", "Runner", "gcloud_error"]


@dataclasses.dataclass(frozen=True)
class Result:
  """What a command returned (``stdout``/``stderr`` empty when it streamed)."""
  returncode: int = 0
  stdout: str = ""
  stderr: str = ""

  @property
  def ok(self) -> bool:
    return self.returncode == 0

  def json(self):
    return json.loads(self.stdout) if self.stdout.strip() else None


def gcloud_error(stderr: str) -> str:
  """gcloud's error as one line: its last ``ERROR: (gcloud.x.y) ...`` line without prefix.

  Example: ``gcloud_error("ERROR: (gcloud.compute.tpus.tpu-vm.create) RESOURCE_EXHAUSTED")``
  is ``"RESOURCE_EXHAUSTED"``.
  """
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("ERROR:")]
  line = (errors or lines or ["(no message)"])[-1]
  line = line.removeprefix("ERROR:").strip()
  if line.startswith("(gcloud.") and ")" in line:
    line = line[line.index(")") + 1:].strip()
  return " ".join(line.split())[:300]


class Runner:
  """Runs commands, or prints them when ``dry_run`` (then ``dry`` stands for the result)."""

  def __init__(self, dry_run: bool = False, out: TextIO | None = None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def show(self, args: Sequence[str]) -> None:
    print(shlex.join(args), file=self.out, flush=True)

  def _real(self, args: Sequence[str]) -> bool:
    """True when ``args`` should run; prints them instead under --dry-run."""
    if self.dry_run:
      self.show(args)
      return False
    if shutil.which(args[0]) is None:
      raise LaunchError(f"{args[0]} not found on PATH: install the Google Cloud CLI, then "
                        "run `gcloud auth login` (or use --dry-run to see the commands)")
    return True

  def run(self, args: Sequence[str], dry: Result = Result(), stream: bool = False) -> Result:
    """Runs ``args``; captures its output unless ``stream`` (then it goes to the terminal).

    Example: ``Runner(dry_run=True).run(["gcloud", "version"], dry=Result(1)).ok is False``.
    """
    if not self._real(args):
      return dry
    if stream:
      return Result(subprocess.run(list(args), stdin=subprocess.DEVNULL).returncode)
    # errors="replace": a log tail can start inside a multi-byte character (tqdm's bars)
    done = subprocess.run(list(args), capture_output=True, text=True, errors="replace",
                          stdin=subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)

  def interactive(self, args: Sequence[str]) -> int:
    """Runs ``args`` attached to this terminal (``ssh`` without a command)."""
    if not self._real(args):
      return 0
    return subprocess.run(list(args)).returncode

  def start(self, args: Sequence[str]) -> subprocess.Popen | None:
    """Starts ``args`` with stdout and stderr merged into one pipe (None when dry)."""
    if not self._real(args):
      return None
    return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, bufsize=0)
