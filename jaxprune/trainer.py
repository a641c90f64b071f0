"""The training loop: teacher fine-tuning and SparseBERT prune+distill on GLUE.

``jaxprune.train`` holds the pure step (one update, compiled once); this module is the
loop around it. ``train_and_evaluate(config, workdir, mode)`` builds the run from the
config (``jaxprune.recipe``: optimizer, pruning, KD weights; ``jaxprune.data``: the
GLUE splits; ``jaxprune.sharding``: mesh and placement), resumes from the newest
readable checkpoint in ``workdir``, trains with periodic dev evaluation, and leaves in
``workdir``:

* ``checkpoints/``   the last few full train states (orbax; resume exactly),
* ``hf/``            the selected model as a Hugging Face directory (best dev score;
                     for pruning runs, best among evaluations at the final sparsity),
* ``metrics.jsonl``  training, eval and pruning-event rows; ``tb/`` TensorBoard events,
* ``run.png``        loss and its terms, sparsity and dev metric over steps,
* ``summary.json``   the final scores, the constant baseline, sparsity and sizes.

Example::

  config = base_config(); config.task = "RTE"
  summary = train_and_evaluate(config, "runs/rte-teacher", mode="finetune")
  config.teacher = "runs/rte-teacher"
  summary = train_and_evaluate(config, "runs/rte-sparse", mode="prune")
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import auto as tqdm

from jaxprune import checkpoint
from jaxprune import config as config_lib
from jaxprune import data
from jaxprune import distill
from jaxprune import models
from jaxprune import paths
from jaxprune import recipe
from jaxprune import report
from jaxprune import sharding
from jaxprune import student as student_lib
from jaxprune import train
from jaxprune.data import glue_dir, load_dev, load_train  # noqa: F401  (public names)
from jaxprune.recipe import make_optimizer  # noqa: F401  (public name)

__all__ = ["TrainingError", "train_and_evaluate", "use_compilation_cache", "evaluate_model", "glue_dir",
           "load_teacher", "make_optimizer", "evaluate_checkpoint",
           "load_train", "load_dev"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def load_teacher(name_or_workdir: str, num_labels: int, student_config: Any = None,
                 hidden_map: bool = False, **overrides: Any):
  """The teacher: a finetune workdir (its ``hf/`` export) or an HF checkpoint; checked
  against ``student_config`` (same vocabulary, and same width unless ``hidden_map``: a
  learned W_h maps the student's hidden states to the teacher's) when given."""
  source = models.run_model_dir(name_or_workdir)
  if source == name_or_workdir and not paths.is_dir(source) and (
      str(source).startswith(("/", ".")) or paths.is_remote(source)):
    raise config_lib.ConfigError(f"teacher {source}: no such directory (expected a finetune "
                                 "workdir or a fine-tuned HF checkpoint)")
  teacher = models.from_pretrained(source, num_labels=num_labels, **overrides)
  checks = [("vocab_size", "they must share a tokenizer")]
  if not hidden_map:
    checks.append(("hidden_size", "hidden-state distillation needs equal widths"))
  for field, why in checks:
    t, s = getattr(teacher[2], field), getattr(student_config or teacher[2], field)
    if t != s:
      raise config_lib.ConfigError(f"teacher {field} {t} != student {field} {s}: {why}")
  return teacher


def _local_rows(batch: dict[str, np.ndarray], mesh) -> dict[str, np.ndarray]:
  """The rows of a global batch that this process's devices hold (topology order)."""
  rows = sharding.batch_rows(mesh, len(batch["labels"]))
  return {k: v[rows] for k, v in batch.items()}


def evaluate_checkpoint(config: ml_collections.ConfigDict, path: str | os.PathLike
                        ) -> dict[str, float]:
  """Official dev metrics of an HF checkpoint (or a workdir's ``hf/`` export)."""
  path = models.run_model_dir(path)
  spec = data.get_task(config.task)
  model, params, _ = models.from_pretrained(path, num_labels=spec.num_labels)
  mesh = sharding.make_mesh(config.mesh_shape)
  shardings = sharding.param_shardings(models.logical_axes(model), mesh, params)
  eval_step = sharding.jit_eval_step(train.make_eval_step(model), mesh, shardings)
  dev = load_dev(config, spec, models.load_encoding_tokenizer(path))
  return evaluate_model(eval_step, sharding.put(params, shardings), dev, spec.name,
                        config.eval_batch_size, mesh, config.trim_padding_to)


def evaluate_model(eval_step, params, dev: dict[str, np.ndarray], task: str, batch_size: int,
                   mesh, trim_to: int = 0) -> dict[str, float]:
  """Official dev metrics of ``params`` (every dev example once, padding weighted out)."""
  acc = data.MetricAccumulator(task)
  for batch in data.eval_batches(dev, batch_size):
    local = _local_rows(data.trim_padding(batch, trim_to), mesh)
    logits = eval_step(params, sharding.global_batch(local, mesh))
    acc.add(np.asarray(jax.device_get(logits)), batch["labels"], batch["weight"])
  return acc.result()


def use_compilation_cache(cache_dir: str, workdir: str | os.PathLike) -> str | None:
  """Points JAX's persistent compilation cache at ``cache_dir``; returns the folder used.

  ``"auto"``: ``$JAX_COMPILATION_CACHE_DIR`` when set, else ``<workdir>/xla_cache``: on
  a TPU VM that a preemption deletes, a cache inside a ``gs://`` workdir survives it, so
  the resumed run skips compiling its steps. ``""``: no persistent cache. Must run before
  the first compilation of the process (later changes do not take effect in JAX).

  Example: ``use_compilation_cache("auto", "gs://bucket/runs/rte")``.
  """
  if cache_dir == "auto":
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        paths.path(workdir) / "xla_cache")
  if not cache_dir:
    return None
  if jax.config.jax_compilation_cache_dir != cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
  return cache_dir


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       mode: str = "prune", progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) one training run; returns the summary written to summary.json.

  Args:
    config: see ``jaxprune.config.base_config``.
    workdir: where checkpoints, metrics and exports go; re-running resumes.
    mode: ``"finetune"`` (the teacher, on labels) or ``"prune"`` (``config.method``,
      SparseBERT's ``distill_prune`` by default).
    progress: show a progress bar.
  """
  # --- set-up: config, models, data, recipe, placement
  config_lib.validate(config, mode)
  sharding.initialize_distributed(config.coordinator_address, config.num_processes,
                                  config.process_id, heartbeat_timeout=config.heartbeat_timeout)
  workdir = paths.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  use_compilation_cache(config.compilation_cache_dir, workdir)
  lead = jax.process_index() == 0
  spec = data.get_task(config.task)
  section = config.finetune if mode == "finetune" else config.train
  distills, prunes = train.MODES[recipe.step_mode(config, mode)]
  base_model = config.model.removeprefix("random:")
  init = models.from_config if config.model.startswith("random:") else models.from_pretrained
  student, params, student_config = init(
      base_model, num_labels=spec.num_labels, seed=config.seed,
      **dict(config.model_overrides, hidden_dropout_prob=section.dropout,
             attention_probs_dropout_prob=section.dropout, dtype=config.precision,
             classifier_relu=config.distill.classifier_relu))
  base_hidden, kept = student_config.hidden_size, None
  if mode == "prune":
    student, params, student_config, kept = student_lib.shrink_student(
        config.student, params, student_config)
  teacher = teacher_params = None
  if distills:
    teacher, teacher_params, teacher_config = load_teacher(
        config.teacher, spec.num_labels, student_config, hidden_map=True,
        classifier_relu=config.distill.classifier_relu, dtype=config.precision)
    params = student_lib.add_hidden_map(params, student_config, teacher_config,
                                        config.distill, kept, base_hidden, config.seed)
  train_data, dev_data = data.load_splits(config, spec,
                                          models.load_encoding_tokenizer(base_model),
                                          workdir, augment=mode == "prune", model=base_model,
                                          progress=progress)
  per_epoch = data.steps_per_epoch(len(train_data["labels"]), section.batch_size)
  if per_epoch == 0:
    raise config_lib.ConfigError(f"{section.batch_size=} exceeds the "
                                 f"{len(train_data['labels'])} training examples")
  total_steps = section.num_steps or max(1, int(round(section.epochs * per_epoch)))
  run = recipe.build(config, mode, total_steps)
  student_axes = models.logical_axes(student)
  if distill.PARAMS_KEY in params:
    student_axes[distill.PARAMS_KEY] = {"hidden_map": distill.hidden_map_axes()}
  placed = sharding.place_run(
      config.mesh_shape, student_axes, params, run.tx,
      jax.random.key(config.seed), teacher_params=teacher_params,
      teacher_axes=models.logical_axes(teacher) if distills else None,
      batch_sizes={"batch_size": section.batch_size,
                   "eval_batch_size": config.eval_batch_size})
  mesh, state, teacher_params = placed.mesh, placed.state, placed.teacher_params
  train_step = sharding.jit_train_step(train.make_train_step(
      student, run.tx, mode=run.mode, teacher=teacher, kd_weights=run.kd_weights,
      temperature=config.distill.temperature, prediction_loss=config.distill.prediction_loss,
      teacher_dropout=config.distill.teacher_dropout, kd_mean_over=config.distill.mean_over,
      attention_loss=config.distill.attention_loss,
      learning_rate=run.learning_rate, prune_where=run.where),
      mesh, placed.state_shardings, placed.teacher_shardings)
  eval_step = sharding.jit_eval_step(train.make_eval_step(student), mesh,
                                     placed.param_shardings)
  trim = config.trim_padding_to  # lengths come from global batches: processes agree
  evaluate = lambda step_fn, p: evaluate_model(step_fn, p, dev_data, spec.name,
                                               config.eval_batch_size, mesh, trim)

  # --- resume: the newest readable checkpoint, else a fresh start
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  best_ckpt = checkpoint.Checkpointer(workdir / "best", keep=1)
  meta: dict[str, Any] = {"data": data.IteratorState()._asdict(), "best": None,
                          "teacher_scores": None}
  restored = ckpt.restore_latest(checkpoint.abstract(state))
  if restored is not None:
    state, meta = restored
    config_lib.check_resume(meta.get("config"), config, mode)
    log.info("resumed %s at step %d", workdir, int(state.step))
  start = int(jax.device_get(state.step))
  writer = report.MetricWriter(workdir, enabled=lead, tensorboard=config.tensorboard)
  # The majority class of the task's own training split: an augmented copy's label mix
  # can differ (RTE x4 flips it), and a baseline from it would hide a collapse.
  prior = (data.read_split(config, spec, config.train_split).labels
           if mode == "prune" and config.augment_copies > 0 else train_data["labels"])
  meta["baseline_scores"] = data.constant_baseline(spec, prior, dev_data["labels"])
  if distills and meta.get("teacher_scores") is None:
    teacher_eval = sharding.jit_eval_step(train.make_eval_step(teacher), mesh,
                                          placed.teacher_shardings)
    meta["teacher_scores"] = evaluate(teacher_eval, teacher_params)
    writer.write(0, meta["teacher_scores"], kind="teacher_eval")

  # --- train, evaluating every eval_every steps and keeping the best eligible params
  final_sparsity = run.sparsity.final_sparsity if prunes else 0.0
  eval_every = section.eval_every or per_epoch
  metric_name = spec.metrics[0]
  iterator = data.train_batches(
      train_data, section.batch_size, seed=config.seed,
      state=data.IteratorState(**meta["data"]),
      rows=sharding.batch_rows(mesh, section.batch_size),
      group_by_length=config.group_by_length, trim_to=trim)
  bar = tqdm.tqdm(total=total_steps, initial=start, disable=not (progress and lead),
                  desc=f"{mode} {spec.name}", unit="step", dynamic_ncols=True, mininterval=1.0)
  # Step results stay on the device until a log, eval or checkpoint step: the host keeps
  # queueing steps instead of waiting for each (see _Deferred).
  deferred = _Deferred(writer, bar, section.log_every, total_steps, start, ckpt)
  sparsity, scores = float(meta.get("sparsity", 0.0)), None
  with checkpoint.PreemptionGuard(config.preemption_check_every) as guard:
    for step in range(start + 1, total_steps + 1):
      batch, it_state = next(iterator)
      # The host knows which steps are mask events: telling the step statically spares the
      # in-graph lax.cond and the update tree it materialises (see prune_by_magnitude).
      event = run.sparsity.is_event(step) if prunes else None
      state, metrics = train_step(state, teacher_params, sharding.global_batch(batch, mesh),
                                  event)
      deferred.add(step, metrics, report.layer_counts(state.opt_state, run.where)
                   if event else None)
      meta["data"] = it_state._asdict()
      last = step == total_steps
      evaluating = step % eval_every == 0 or last
      stop = guard.requested(step)  # a signal on any process: save and stop, together
      saving = step % section.checkpoint_every == 0 or evaluating or last or stop
      if step % section.log_every == 0 or saving:
        sparsity = meta["sparsity"] = deferred.flush()["sparsity"]  # checks the losses
      if evaluating:
        scores = evaluate(eval_step, state.params)
        writer.write(step, {**scores, "sparsity": sparsity}, kind="eval")
        _keep_if_best(meta, best_ckpt, state, step, scores, sparsity, metric_name,
                      eligible=not prunes or sparsity >= final_sparsity - 1e-6)
        bar.set_postfix(**deferred.postfix, **{metric_name: f"{scores[metric_name]:.4f}"})
      if saving:  # every loss up to here was checked finite by flush()
        ckpt.save(step, state, {**meta, "config": json.loads(config.to_json_best_effort())})
        writer.flush()
      if stop and not last:
        ckpt.close()
        best_ckpt.wait()
        bar.close()
        writer.write(step, {"signal": guard.signal or 0}, kind="preempted")
        writer.close()
        raise checkpoint.Preempted(f"preempted at step {step}; re-run the same command to "
                                   "resume")
  bar.close()

  # --- finish: a resumed finished run is evaluated once more; export, summary, plot
  if scores is None:
    scores = evaluate(eval_step, state.params)
    _keep_if_best(meta, best_ckpt, state, total_steps, scores, sparsity, metric_name,
                  eligible=True)
  ckpt.close()
  best_ckpt.wait()
  writer.flush()
  summary = _finish(workdir, config, student_config, state, best_ckpt, meta, scores,
                    mode, run.mode, mesh)
  writer.close()
  return summary


class _Deferred:
  """A run's per-step results, kept on the device and fetched together.

  Fetching a step's metrics (``device_get``, ``float``) makes the host wait until the
  device has finished that step, so it cannot queue the next one meanwhile: on a TPU that
  idles the chips for the host's share of every step. The loop therefore hands each
  step's metrics (and, at mask events, the masks' per-layer counts) to `add` without
  looking at them, and calls `flush` every ``log_every`` steps and before every
  checkpoint: one transfer for all of them, the NaN check over every loss since the
  last flush, the metric rows of the logged steps and the progress bar.
  """

  def __init__(self, writer, bar, log_every: int, total_steps: int, start: int, ckpt):
    self.writer, self.bar, self.ckpt = writer, bar, ckpt
    self.log_every, self.total_steps, self.start = log_every, total_steps, start
    self.t0 = time.time()
    self.pending: list[tuple[int, Any, Any]] = []
    self.postfix: dict[str, str] = {}

  def add(self, step: int, metrics: Any, mask_counts: Any = None) -> None:
    self.pending.append((step, metrics, mask_counts))

  def flush(self) -> dict[str, float]:
    """Fetches the pending results, writes their rows; returns the last step's metrics.

    Raises:
      TrainingError: a loss since the last flush is not finite (the last checkpoint was
        saved before it, so it is good).
    """
    fetched = jax.device_get([(m, c[0] if c else None) for _, m, c in self.pending])
    rows = []
    for (step, _, counts), (metrics, nonzero) in zip(self.pending, fetched):
      metrics = {k: float(v) for k, v in metrics.items()}
      if not math.isfinite(metrics["loss"]):
        self.ckpt.close()
        self.bar.close()
        steps = self.ckpt.steps()
        raise TrainingError(f"loss became {metrics['loss']} at step {step}; stopping. The "
                            f"last good checkpoint (step {steps[-1] if steps else 0}) is in "
                            f"{self.ckpt.directory}")
      if counts is not None:
        self.writer.write(step, report.sparsity_by_layer(nonzero, counts[1]),
                          kind="prune_event")
      if step % self.log_every == 0 or step == self.total_steps:
        rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
        self.writer.write(step, {**metrics, "steps_per_s": rate})
      rows.append(metrics)
    self.bar.update(len(self.pending))
    self.pending = []
    self.postfix = {"loss": f"{rows[-1]['loss']:.4f}",
                    "sparsity": f"{rows[-1]['sparsity']:.3f}"}
    self.bar.set_postfix(**self.postfix)
    return rows[-1]


def _keep_if_best(meta, best_ckpt, state, step: int, scores, sparsity: float,
                  metric_name: str, eligible: bool) -> None:
  """Saves ``state.params`` to ``best/`` when eligible and better than the best so far."""
  best = meta.get("best")
  if eligible and (best is None or scores[metric_name] > best["scores"][metric_name]):
    meta["best"] = {"step": step, "scores": scores, "sparsity": sparsity}
    best_ckpt.save(step, {"params": state.params}, {"step": step, "scores": scores},
                   force=True)


def _finish(workdir, config, model_config, state, best_ckpt, meta, last_scores,
            mode: str, step_mode: str, mesh) -> dict[str, Any]:
  """Exports the selected params to ``hf/``, writes summary.json and the plot."""
  best = meta.get("best")
  steps = int(jax.device_get(state.step))
  params = state.params
  if best is not None and best["step"] != steps:
    params = best_ckpt.restore(best["step"], {"params": checkpoint.abstract(state.params)})[0][
        "params"]
  params = distill.split_params(sharding.to_host(params))[0]  # W_h is not part of the model
  selected = best or {"step": steps, "scores": last_scores}
  summary: dict[str, Any] = {
      "task": config.task, "mode": mode, "method": step_mode, "steps": steps,
      "last_scores": last_scores, "selected": selected,
      "teacher_scores": meta.get("teacher_scores"),
      "baseline_scores": meta.get("baseline_scores"), **report.sparsity_summary(params),
      "processes": jax.process_count(), "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "warnings": report.baseline_warnings(selected["scores"], meta.get("baseline_scores"))}
  for warning in summary["warnings"]:
    log.warning("%s", warning)
  if jax.process_index() == 0:
    report.publish_run(workdir, summary, params, model_config,
                       tokenizer_from=config.model.removeprefix("random:"),
                       title=f"{config.task} {step_mode}", plot=config.plot)
  if jax.process_count() > 1:  # nobody reads hf/ (the demo's student) before it is there
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("jaxprune run published")
  return summary

