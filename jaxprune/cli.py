"""What each ``jaxprune --mode=...`` does (kept out of ``main.py`` so it stays short).

Example::

  from jaxprune import cli
  from jaxprune.config import demo_config
  print(cli.run("demo", demo_config(), "runs/demo"))
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ml_collections

from jaxprune import config as config_lib
from jaxprune import paths
from jaxprune import report
from jaxprune.errors import UserError

__all__ = ["run", "demo"]

DEFAULT_WORKDIR = {"demo": "runs/demo"}


def _need(value, what: str):
  if not value:
    raise config_lib.ConfigError(f"--{what} is required for this mode")
  return value


def run(mode: str, config: ml_collections.ConfigDict | None, workdir: str | None, *,
        export_format: str = "hf", out: str | None = None) -> str | None:
  """Runs one CLI mode; returns text to print (or None).

  Every mode joins the multi-process run first (``config.coordinator_address``; once),
  so that on a pod each worker knows its place: the training modes share the work,
  and in ``augment`` and ``export`` process 0 alone writes while the others wait.
  """
  from jaxprune import sharding
  from jaxprune import trainer

  if config is None:
    config = config_lib.demo_config() if mode == "demo" else config_lib.base_config()
  sharding.initialize_distributed(config.coordinator_address, config.num_processes,
                                  config.process_id, heartbeat_timeout=config.heartbeat_timeout)
  workdir = workdir or DEFAULT_WORKDIR.get(mode)
  if workdir and paths.exists(workdir) and not paths.is_dir(workdir):
    raise config_lib.ConfigError(f"workdir {workdir} is a file (expected a folder)")
  if mode == "demo":
    return demo(config, paths.path(workdir))
  if mode in ("finetune", "prune"):
    summary = trainer.train_and_evaluate(config, _need(workdir, "workdir"), mode)
    return json.dumps(summary, indent=2)
  if mode == "eval":
    scores = trainer.evaluate_checkpoint(config, _need(workdir, "workdir"))
    return json.dumps({"task": config.task, "dev": scores}, indent=2)
  if mode == "augment":
    from jaxprune import data
    _need(workdir, "workdir")
    result = _on_first_process("augment", lambda: data.augment_task(
        data.glue_dir(config), config.task, workdir,
        model=config.model.removeprefix("random:"), seed=config.seed))
    return result and (f"wrote {result.num_rows} rows from {result.num_examples} examples "
                       f"to {result.path} in {result.seconds:.0f} s; train on it with "
                       f"--config.train_split=train_aug --config.aug_dir={workdir}")
  if mode == "export":
    _need(workdir, "workdir")
    return _on_first_process("export", lambda: export(workdir, export_format, out))
  raise config_lib.ConfigError(f"mode {mode!r}: expected one of demo, finetune, prune, eval, "
                               "augment, export")


def _on_first_process(name: str, work):
  """``work()`` on process 0 only (one writer per file); the others wait for it and get
  None. Host-only work: sharing it would not make it faster on a pod's few hosts.

  When ``work()`` fails, every process stops with its message (a UserError on the
  others), so each worker exits the same way instead of waiting in a collective for a
  process that left."""
  import jax
  if jax.process_count() == 1:
    return work()
  from jax._src import distributed
  client, key = distributed.global_state.client, f"jaxprune/{name}/outcome"
  if jax.process_index() == 0:
    try:
      result = work()
    except BaseException as e:
      client.key_value_set(key, _outcome(e))
      raise
    client.key_value_set(key, "")
    return result
  outcome = client.blocking_key_value_get(key, _WAIT_FOR_PROCESS_0_MS)
  if outcome:
    raise UserError(outcome)
  return None


# How long the other processes wait for process 0's export or augmentation (a week).
_WAIT_FOR_PROCESS_0_MS = 7 * 24 * 3600 * 1000


def _outcome(error: BaseException) -> str:
  """What the other processes report when process 0's work failed with ``error``."""
  if isinstance(error, (UserError, FileNotFoundError)):
    return str(error)
  return f"process 0 stopped on {type(error).__name__}: {error}".strip().rstrip(":")


def export(workdir: str, export_format: str, out: str | None) -> str:
  """Exports a run's selected model (``<workdir>/hf``) in another format."""
  from jaxprune import export as export_lib
  from jaxprune import models

  source = models.run_model_dir(workdir)
  _, params, model_config = models.from_pretrained(source)
  target = paths.path(out or f"{str(workdir).rstrip('/')}/export-"
                              f"{export_format.replace(':', '-')}")
  export_lib.export_model(params, None, model_config, target, format=export_format,
                          tokenizer_from=source)
  size = paths.tree_bytes(target)
  return f"exported {source} as {export_format} to {target} ({size / 2**20:.1f} MiB)"


def _check_inputs(config: ml_collections.ConfigDict) -> tuple[Path, Path]:
  """Where the demo's data and model come from, with how-to-get-them errors."""
  from jaxprune.data import DataError, glue_dir
  from jaxprune.models import ModelNotFoundError, resolve

  try:
    glue = glue_dir(config)
  except DataError as e:
    raise DataError(f"{e}. Get GLUE with the GLUE download script (download_glue_data.py) "
                    "or use TFDS: --config.data_source=tfds") from None
  if not (glue / config.task).is_dir() and config.data_source == "tsv":
    raise DataError(f"{glue / config.task}: no such folder (expected the GLUE files of "
                    f"{config.task}; get them with the GLUE download script)")
  try:
    model = resolve(config.model.removeprefix("random:"))
  except ModelNotFoundError as e:
    raise ModelNotFoundError(f"{e}") from None
  return glue, model


def demo(config: ml_collections.ConfigDict, workdir) -> str | None:
  """Fine-tunes a teacher, prunes+distills a student, and compares them on GLUE dev."""
  from jaxprune import trainer

  import jax
  glue, model = _check_inputs(config)
  say = print if jax.process_index() == 0 else (lambda *a, **k: None)
  say(f"data:  {config.task} from {glue.resolve() if config.data_source == 'tsv' else 'TFDS'}"
        f" (train subsample {config.train_subsample or 'all'}, max_seq_len {config.max_seq_len})")
  say(f"model: {config.model} ({model})")
  say(f"runs:  {workdir}/teacher, {workdir}/student\n")
  t0 = time.time()
  teacher = trainer.train_and_evaluate(config, workdir / "teacher", "finetune")
  t1 = time.time()
  with config.unlocked():
    config.teacher = str(workdir / "teacher")
  student = trainer.train_and_evaluate(config, workdir / "student", "prune")
  t2 = time.time()
  if jax.process_index() != 0:  # the export sizes in the table come from process 0's export
    return None
  return summary_table(teacher, student, t1 - t0, t2 - t1, workdir)


def summary_table(teacher: dict[str, Any], student: dict[str, Any], teacher_s: float,
                  student_s: float, workdir) -> str:
  """The demo's closing table: scores on the official dev set, sparsity, sizes."""
  metrics = list(teacher["selected"]["scores"])
  rows = []
  for name, s, secs in (("teacher (dense, fine-tuned)", teacher, teacher_s),
                        (f"student ({student['encoder_sparsity']:.0%} sparse, distilled)",
                         student, student_s)):
    rows.append([name, *[f"{100 * s['selected']['scores'][m]:.2f}" for m in metrics],
                 f"{s['encoder_sparsity']:.1%}",
                 f"{s['encoder_nonzero']:,} / {s['encoder_size']:,}",
                 f"{s['nonzero_params']:,}",
                 f"{s['sparse_fp16_export_bytes'] / 2**20:.1f} MiB",
                 f"{secs / 60:.1f} min"])
  table = report.table(["model", *[f"dev {m}" for m in metrics], "encoder sparsity",
                        "encoder nonzero", "all nonzero", "sparse fp16 artifact", "time"], rows)
  main = metrics[0]
  gap = 100 * (teacher["selected"]["scores"][main] - student["selected"]["scores"][main])
  return (f"\n{student['task']} dev set (official metric: {main})\n{table}\n\n"
          f"gap teacher - student: {gap:.2f} points of {main}\n"
          f"pruned model (HF format, loads in transformers): {workdir / 'student' / 'hf'}\n"
          f"plots: {workdir / 'teacher' / 'run.png'}, {workdir / 'student' / 'run.png'}")
