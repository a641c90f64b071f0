"""The CLI on a host that cannot read one checkpoint step (a transient read error).

``python tests/unreadable_checkpoint.py STEP <jaxprune flags>`` runs the CLI with
``Checkpointer.restore`` failing for ``STEP`` as orbax would on a truncated file or a
flaky bucket read. Run on one process of several, it checks that the processes still
agree on the step they resume from.
"""

import sys


def install(step: int) -> None:
  from jaxprune import checkpoint
  restore = checkpoint.Checkpointer.restore

  def flaky(self, s, target):
    if s == step and self.directory.name == "checkpoints":
      raise OSError(f"simulated read error of step {s} on this host")
    return restore(self, s, target)

  checkpoint.Checkpointer.restore = flaky


if __name__ == "__main__":
  install(int(sys.argv.pop(1)))
  from jaxprune.main import run
  sys.argv[0] = "jaxprune"
  run()
