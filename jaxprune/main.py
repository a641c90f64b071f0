"""The ``jaxprune`` command line: absl flags plus an ml_collections config file.

Intentionally short; the work is done by importable modules.

  jaxprune --mode=demo
  jaxprune --mode=finetune --config=configs/minilm_glue.py:task=rte --workdir=runs/rte-teacher
  jaxprune --mode=prune --config=configs/minilm_glue.py:task=rte,sparsity=0.9 \
      --workdir=runs/rte-sparse --config.teacher=runs/rte-teacher --config.train.lr=1e-4
  jaxprune --mode=eval --config=configs/minilm_glue.py:task=rte --workdir=runs/rte-sparse
  jaxprune --mode=augment --config=configs/minilm_glue.py:task=mrpc --workdir=runs/aug
  jaxprune --mode=export --workdir=runs/rte-sparse --format=sparse
"""

import gc
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

MODES = ("demo", "finetune", "prune", "eval", "augment", "export")

_MODE = flags.DEFINE_enum("mode", "demo", MODES, "What to run.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file (configs/*.py[:args]); fields can be overridden with "
    "--config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it exists).")
_FORMAT = flags.DEFINE_enum("format", "hf", ["hf", "sparse", "2:4"], "Export format.")
_OUT = flags.DEFINE_string("out", None, "Export directory (default <workdir>/export-<format>).")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with bad flags and config files as one-line errors (exit 2)."""
  try:
    argv = flags.FLAGS(argv)
    error = getattr(flags.FLAGS["config"].value, "_error", None)  # a config file not loaded
  except (flags.Error, OSError) as e:  # OSError: --config.<field> on a file not loaded
    error = e
  except (AttributeError, KeyError) as e:  # ml_collections: --config.<no such field>
    field = str(e).strip("\"'")
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and field in a),
                "--config")
    error = f"{flag}: the config has no field {field!r}"
  if error is None:
    return argv
  text = str(error)
  if missing := re.search(r"No such file or directory: '([^']*)'", text):
    message = f"config file {missing[1]}: no such file (expected a .py file with get_config)"
  elif "Traceback" in text:  # a config file that raised: its last line says why
    message = re.sub(r"^[\w.]+(Error|Exception): ", "", text.strip().splitlines()[-1])
  else:
    message = " ".join(text.split())
  print(f"jaxprune: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  gc.disable()  # while jax & co. are imported; quiet_gc turns it back on
  from jaxprune import cli
  from jaxprune.checkpoint import PREEMPTED_EXIT_CODE, Preempted
  from jaxprune.errors import UserError
  from jaxprune.trainer import TrainingError
  quiet_gc()
  try:
    summary = cli.run(_MODE.value, _CONFIG.value, _WORKDIR.value, export_format=_FORMAT.value,
                      out=_OUT.value)
  except (UserError, FileNotFoundError) as e:  # one line, exit code 2, no traceback
    print(f"jaxprune: error: {e}", file=sys.stderr)
    _exit(2)
  except OSError as e:  # storage out of reach (after gcsfs's retries), no permission, full
    print(f"jaxprune: error: {type(e).__name__}: {e}", file=sys.stderr)
    _exit(2)
  except TrainingError as e:
    print(f"jaxprune: stopped: {e}", file=sys.stderr)
    sys.exit(3)
  except Preempted as e:  # SIGTERM/SIGINT: saved; the same command resumes
    print(f"jaxprune: {e}", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_CODE)
  except Exception as e:  # a collective that failed because another process died
    jax = sys.modules.get("jax")
    if jax is None or jax.process_count() == 1 or not isinstance(e, jax.errors.JaxRuntimeError):
      raise
    from jaxprune.sharding import exit_peer_lost
    exit_peer_lost(str(e).splitlines()[0] if str(e) else type(e).__name__)
  jax = sys.modules.get("jax")
  if jax is not None and jax.process_count() > 1:
    jax.distributed.shutdown()  # every process leaves together
  if summary is not None and (jax is None or jax.process_index() == 0):
    print(summary)


def quiet_gc() -> None:
  """Python's cyclic garbage collector in a short-lived run: fewer collections, and
  never again over what is alive now.

  The objects of jax, flax, optax and orbax (and later the traced programs) live until
  the process ends, yet each full collection walks all of them, and a young collection
  ran every 700 allocations, thousands of times while the train steps are traced: ~0.9 s
  of a tiny prune run's 8.5 s in the garbage collector (``gc.callbacks``), 0.2 s after
  this (2-core AMD EPYC; tests/README.md, "2026-12-06, late"). The pytest workers call it
  too. Memory is still freed by reference counting as before; only cycles wait longer.

  Call it after the imports, with the collector disabled before them: importing jax,
  flax, optax and orbax ran 335 collections, 0.28-0.36 s of CPU (``gc.callbacks``; 23
  and 0.22-0.32 s with this threshold, as full collections walk the growing heap)."""
  gc.freeze()  # the imported modules: never collected, so never scanned again
  gc.set_threshold(10_000, 10, 10)  # young collections every 10,000 allocations, not 700
  gc.enable()


def _exit(code: int) -> None:
  """Exits; in a multi-process run, together with the other processes when they stop too.

  A configuration error or a missing file stops every process at about the same point:
  they meet at a barrier and leave through JAX's shutdown, so every worker exits with
  ``code`` (a process leaving alone first would take the coordinator down, and the
  others would abort). An error only this process met (a file only it read) finds no
  one at the barrier: after ``_EXIT_BARRIER_S`` it leaves at once, without the shutdown
  barrier the others, waiting in their next collective, would never reach; its broken
  connections end them (PEER_LOST_EXIT_CODE)."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    sys.exit(code)
  sys.stderr.flush()
  sys.stdout.flush()
  from jax._src import distributed
  try:
    distributed.global_state.client.wait_at_barrier("jaxprune_exit", _EXIT_BARRIER_S * 1000)
  except Exception:  # alone (DEADLINE_EXCEEDED) or the coordinator is gone
    os._exit(code)
  jax.distributed.shutdown()
  sys.exit(code)


# Seconds a process stopping on an error waits for the others to stop too.
_EXIT_BARRIER_S = 30


def run() -> None:
  """Console-script entry point."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
