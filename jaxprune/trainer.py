"""The training loop: teacher fine-tuning and SparseBERT prune+distill on GLUE.

``train_and_evaluate(config, workdir, mode)`` builds everything from the config
(models, data, optimizer with the pruning transform, mesh and shardings), resumes from
the newest readable checkpoint in ``workdir``, trains with periodic dev evaluation, and
leaves in ``workdir``:

* ``checkpoints/``   the last few full train states (orbax; resume exactly),
* ``hf/``            the selected model as a Hugging Face directory (best dev score;
                     for pruning runs, best among evaluations at the final sparsity),
* ``metrics.jsonl``  training, eval and pruning-event rows; ``tb/`` TensorBoard events,
* ``run.png``        loss, sparsity and dev metric over steps,
* ``summary.json``   the final scores, sparsity and sizes.

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
import re
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from jaxprune import checkpoint
from jaxprune import config as config_lib
from jaxprune import data
from jaxprune import distill
from jaxprune import masks as masks_lib
from jaxprune import models
from jaxprune import optim
from jaxprune import report
from jaxprune import schedules
from jaxprune import sharding
from jaxprune import train
from jaxprune import transforms

__all__ = ["TrainingError", "train_and_evaluate", "evaluate_model", "glue_dir",
           "load_teacher", "make_optimizer", "evaluate_checkpoint",
           "load_train", "load_dev"]

log = logging.getLogger(__name__)

PRUNE_WHERE = {"bert_encoder": masks_lib.BERT_ENCODER_MATRICES}
_LAYER = re.compile(r"encoder/layer/(\d+)/")


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def glue_dir(config: ml_collections.ConfigDict) -> Path:
  """The GLUE folder: config.glue_dir, else $JAXPRUNE_GLUE_DIR, else ../shared/data/glue."""
  path = Path(config.glue_dir or os.environ.get("JAXPRUNE_GLUE_DIR", "../shared/data/glue"))
  if config.data_source == "tsv" and not path.is_dir():
    raise data.DataError(
        f"{path}: no GLUE folder (expected <TASK>/train.tsv, dev.tsv as written by the GLUE "
        "download script; set --config.glue_dir or $JAXPRUNE_GLUE_DIR, or use "
        "--config.data_source=tfds)")
  return path


def _read(config, spec, split: str) -> data.Examples:
  if config.data_source == "tfds":
    return data.read_tfds(spec, split)
  if split == "train_aug" and config.aug_dir:
    return data.read_tsv(config.aug_dir, spec, split)
  return data.read_tsv(glue_dir(config), spec, split)


def load_dev(config, spec, tokenizer) -> dict[str, np.ndarray]:
  """The tokenized first dev split (optionally only its first ``dev_subsample`` rows)."""
  dev = _read(config, spec, spec.dev_splits[0])
  if 0 < config.dev_subsample < len(dev):
    dev = dev.select(np.arange(config.dev_subsample))
  return data.encode(dev, tokenizer, config.max_seq_len)


def load_train(config, spec, tokenizer) -> dict[str, np.ndarray]:
  """The tokenized training split, optionally a seeded subsample."""
  examples = _read(config, spec, config.train_split)
  if 0 < config.train_subsample < len(examples):
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.choice(len(examples), config.train_subsample, replace=False))
    examples = examples.select(keep)
  return data.encode(examples, tokenizer, config.max_seq_len)


def load_teacher(name_or_workdir: str, num_labels: int, **overrides: Any):
  """The teacher: a finetune workdir (its ``hf/`` export) or an HF checkpoint."""
  path = Path(name_or_workdir)
  if (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file():
    if not (path / "hf" / "config.json").is_file():
      raise config_lib.ConfigError(
          f"teacher workdir {path} has no hf/ export: its finetune run has not finished")
    path = path / "hf"
  elif path.is_absolute() or name_or_workdir.startswith("."):
    if not path.is_dir():
      raise config_lib.ConfigError(f"teacher {path}: no such directory (expected a finetune "
                                   "workdir or a fine-tuned HF checkpoint)")
  return models.from_pretrained(path if path.is_dir() else name_or_workdir,
                                num_labels=num_labels, **overrides)


def make_optimizer(section, total_steps: int, prune=None, prunes: bool = False
                   ) -> tuple[optax.GradientTransformation, optax.ScalarOrSchedule,
                              schedules.SparsitySchedule | None]:
  """The optimizer of a run (+ its lr schedule and sparsity schedule when pruning)."""
  if section.optimizer == "bert_adam":
    lr = section.lr
    tx = optim.bert_adam(lr, weight_decay=section.weight_decay, max_grad_norm=section.clip_norm)
  else:
    warmup = int(round(section.warmup_ratio * total_steps))
    lr = optim.warmup_linear_schedule(section.lr, total_steps, warmup)
    tx = optim.adamw_warmup_linear(section.lr, total_steps, warmup_steps=warmup,
                                   weight_decay=section.weight_decay,
                                   max_grad_norm=section.clip_norm)
  if not prunes:
    return tx, lr, None
  ramp = max(1, int(round(prune.ramp_fraction * (total_steps - prune.begin_step))))
  sched = schedules.cubic_sparsity(prune.sparsity, ramp, events=min(prune.events, ramp),
                                   begin=prune.begin_step,
                                   reference=prune.schedule == "reference")
  tx = optax.chain(tx, transforms.prune_by_magnitude(
      sched, where=PRUNE_WHERE[prune.where], scope=prune.scope,
      ties="keep" if prune.keep_ties else "exact", pattern=_pattern(prune.pattern)))
  return tx, lr, sched


def _pattern(name: str):
  if name == "unstructured":
    return None
  if m := re.fullmatch(r"(\d+):(\d+)", name):
    return masks_lib.NM(int(m[1]), int(m[2]))
  if m := re.fullmatch(r"block:(\d+)x(\d+)", name):
    return masks_lib.Blocks(int(m[1]), int(m[2]))
  raise config_lib.ConfigError(f"prune.pattern={name!r}: expected 'unstructured', 'N:M' "
                               "(e.g. '2:4') or 'block:RxC' (e.g. 'block:4x4')")


def trim_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Cuts the all-padding tail columns of a batch, keeping lengths a multiple of ``multiple``.

  Few distinct lengths mean few compilations; short-sentence tasks (SST-2's median is 10
  tokens) then run several times faster. ``multiple=0`` returns the batch unchanged.
  """
  if not multiple:
    return batch
  full = batch["input_ids"].shape[1]
  longest = int(batch["attention_mask"].sum(axis=1).max(initial=1))
  length = min(full, -(-longest // multiple) * multiple)
  return {k: v[:, :length] if v.ndim == 2 else v for k, v in batch.items()}


def _local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  n = len(batch["labels"]) // jax.process_count()
  i = jax.process_index()
  return {k: v[i * n:(i + 1) * n] for k, v in batch.items()}


def evaluate_checkpoint(config: ml_collections.ConfigDict, path: str | os.PathLike
                        ) -> dict[str, float]:
  """Official dev metrics of an HF checkpoint (or a workdir's ``hf/`` export)."""
  path = Path(path)
  if (path / "hf" / "config.json").is_file():
    path = path / "hf"
  spec = data.get_task(config.task)
  model, params, _ = models.from_pretrained(path, num_labels=spec.num_labels)
  mesh = sharding.make_mesh(config.mesh_shape)
  shardings = sharding.param_shardings(models.logical_axes(model), mesh, params)
  eval_step = jax.jit(train.make_eval_step(model),
                      in_shardings=(shardings, sharding.batch_sharding(mesh)),
                      out_shardings=sharding.replicated(mesh))
  dev = load_dev(config, spec, models.load_tokenizer(path))
  return evaluate_model(eval_step, sharding.put(params, shardings), dev, spec.name,
                        config.eval_batch_size, mesh, config.trim_padding_to)


def evaluate_model(eval_step, params, dev: dict[str, np.ndarray], task: str, batch_size: int,
                   mesh, trim_to: int = 0) -> dict[str, float]:
  """Official dev metrics of ``params`` (every dev example once, padding weighted out)."""
  acc = data.MetricAccumulator(task)
  for batch in data.eval_batches(dev, batch_size):
    local = _local_rows(trim_padding(batch, trim_to))
    logits = eval_step(params, sharding.global_batch(local, mesh))
    acc.add(np.asarray(jax.device_get(logits)), batch["labels"], batch["weight"])
  return acc.result()


def _layer_sparsity(masks: Any, where) -> dict[str, float]:
  """Sparsity per encoder layer (and in total) of a mask tree."""
  rep = masks_lib.sparsity_report(jax.device_get(masks), where)
  sizes: dict[str, list[int]] = {}
  for path, leaf in rep.leaves.items():
    m = _LAYER.search(path)
    key = f"layer_{m[1]}" if m else "other"
    s = sizes.setdefault(key, [0, 0])
    s[0] += leaf.size
    s[1] += leaf.nonzero
  out = {k: 1.0 - nz / size for k, (size, nz) in sorted(sizes.items())}
  out["total"] = rep.sparsity
  return out


def _dir_bytes(path: Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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
  config_lib.validate(config, mode)
  sharding.initialize_distributed(config.coordinator_address, config.num_processes,
                                  config.process_id)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  spec = data.get_task(config.task)
  section = config.finetune if mode == "finetune" else config.train
  step_mode = "finetune" if mode == "finetune" else config.method
  distills, prunes = train.MODES[step_mode]

  overrides = dict(config.model_overrides, hidden_dropout_prob=section.dropout,
                   attention_probs_dropout_prob=section.dropout,
                   classifier_relu=config.distill.classifier_relu)
  init = models.from_pretrained
  if config.model.startswith("random:"):
    init = models.from_config
  base_model = config.model.removeprefix("random:")
  student, params, student_config = init(base_model, num_labels=spec.num_labels,
                                         seed=config.seed, **overrides)
  teacher = teacher_params = None
  if distills:
    teacher, teacher_params, teacher_config = load_teacher(
        config.teacher, spec.num_labels, classifier_relu=config.distill.classifier_relu)
    if teacher_config.vocab_size != student_config.vocab_size:
      raise config_lib.ConfigError(
          f"teacher vocab_size {teacher_config.vocab_size} != student vocab_size "
          f"{student_config.vocab_size}: they must share a tokenizer")
    if teacher_config.hidden_size != student_config.hidden_size:
      raise config_lib.ConfigError(
          f"teacher hidden_size {teacher_config.hidden_size} != student hidden_size "
          f"{student_config.hidden_size}: hidden-state distillation needs equal widths")
  tokenizer = models.load_tokenizer(base_model)
  train_data = load_train(config, spec, tokenizer)
  dev_data = load_dev(config, spec, tokenizer)

  per_epoch = data.steps_per_epoch(len(train_data["labels"]), section.batch_size)
  if per_epoch == 0:
    raise config_lib.ConfigError(f"{section.batch_size=} exceeds the "
                                 f"{len(train_data['labels'])} training examples")
  total_steps = section.num_steps or max(1, int(round(section.epochs * per_epoch)))
  tx, lr, sparsity_schedule = make_optimizer(section, total_steps, config.prune, prunes)
  where = PRUNE_WHERE[config.prune.where]

  try:
    mesh = sharding.make_mesh(config.mesh_shape)
  except ValueError as e:
    raise config_lib.ConfigError(f"mesh_shape: {e}") from None
  data_size = mesh.shape["data"]
  for name, size in (("batch_size", section.batch_size), ("eval_batch_size",
                                                          config.eval_batch_size)):
    if size % data_size:
      raise config_lib.ConfigError(
          f"{name}={size} is not divisible by the {data_size} data-parallel devices")
  student_sh = sharding.param_shardings(models.logical_axes(student), mesh, params)
  state, state_sh = sharding.create_sharded_state(
      params, tx, jax.random.key(config.seed), student_sh, mesh)
  teacher_sh = None
  if distills:
    teacher_sh = sharding.param_shardings(models.logical_axes(teacher), mesh, teacher_params)
    teacher_params = sharding.put(teacher_params, teacher_sh)
  train_step = sharding.jit_train_step(train.make_train_step(
      student, tx, mode=step_mode, teacher=teacher,
      kd_weights=distill.KDWeights(config.distill.attention_weight,
                                   config.distill.hidden_weight,
                                   config.distill.prediction_weight),
      temperature=config.distill.temperature,
      prediction_loss=config.distill.prediction_loss,
      teacher_dropout=config.distill.teacher_dropout,
      kd_mean_over=config.distill.mean_over, learning_rate=lr,
      prune_where=where), mesh, state_sh, teacher_sh)
  eval_step = jax.jit(train.make_eval_step(student),
                      in_shardings=(student_sh, sharding.batch_sharding(mesh)),
                      out_shardings=sharding.replicated(mesh))

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  meta: dict[str, Any] = {"data": data.IteratorState()._asdict(), "best": None,
                          "teacher_scores": None}
  restored = ckpt.restore_latest(checkpoint.abstract(state))
  if restored is not None:
    state, meta = restored
    log.info("resumed %s at step %d", workdir, int(state.step))
  start = int(jax.device_get(state.step))
  metric_name = spec.metrics[0]

  writer = report.MetricWriter(workdir, enabled=lead)
  # Trimming needs the whole global batch on every process to agree on its length.
  trim = config.trim_padding_to if jax.process_count() == 1 else 0
  if distills and meta.get("teacher_scores") is None:
    teacher_eval = jax.jit(train.make_eval_step(teacher),
                           in_shardings=(teacher_sh, sharding.batch_sharding(mesh)),
                           out_shardings=sharding.replicated(mesh))
    meta["teacher_scores"] = evaluate_model(teacher_eval, teacher_params, dev_data, spec.name,
                                            config.eval_batch_size, mesh, trim)
    writer.write(0, meta["teacher_scores"], kind="teacher_eval")

  final_sparsity = sparsity_schedule.final_sparsity if prunes else 0.0
  eval_every = section.eval_every or per_epoch
  best_ckpt = checkpoint.Checkpointer(workdir / "best", keep=1)

  def evaluate_and_keep(step: int, sparsity: float) -> dict[str, float]:
    scores = evaluate_model(eval_step, state.params, dev_data, spec.name,
                            config.eval_batch_size, mesh, trim)
    writer.write(step, {**scores, "sparsity": sparsity}, kind="eval")
    eligible = not prunes or sparsity >= final_sparsity - 1e-6
    best = meta.get("best")
    if eligible and (best is None or scores[metric_name] > best["scores"][metric_name]):
      meta["best"] = {"step": step, "scores": scores, "sparsity": sparsity}
      best_ckpt.save(step, {"params": state.params}, {"step": step, "scores": scores},
                     force=True)
    return scores

  iterator = data.train_batches(
      train_data, section.batch_size, seed=config.seed,
      state=data.IteratorState(**meta["data"]), process_index=jax.process_index(),
      process_count=jax.process_count(), group_by_length=config.group_by_length)
  bar = _progress(total_steps, start, enabled=progress and lead, desc=f"{mode} {spec.name}")
  sparsity = float(meta.get("sparsity", 0.0))
  scores: dict[str, float] | None = None
  t0 = time.time()
  for step in range(start + 1, total_steps + 1):
    batch, it_state = next(iterator)
    batch = trim_padding(batch, trim)
    # The host knows which steps are mask events: telling the step statically spares the
    # in-graph lax.cond and the update tree it materialises (see prune_by_magnitude).
    event = sparsity_schedule.is_event(step) if prunes else None
    state, metrics = train_step(state, teacher_params, sharding.global_batch(batch, mesh),
                                event)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(metrics["loss"]):
      ckpt.close()
      raise TrainingError(f"loss became {metrics['loss']} at step {step}; stopping. The last "
                          f"good checkpoint (step {ckpt.steps()[-1] if ckpt.steps() else 0}) "
                          f"is in {ckpt.directory}")
    meta["data"] = it_state._asdict()
    if prunes and sparsity_schedule.is_event(step):
      layers = _layer_sparsity(transforms.find_masks(state.opt_state), where)
      writer.write(step, layers, kind="prune_event")
    sparsity = metrics["sparsity"]
    meta["sparsity"] = sparsity
    if step % section.log_every == 0 or step == total_steps:
      writer.write(step, {**metrics, "steps_per_s": (step - start) / (time.time() - t0)})
    bar.update(1)
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", sparsity=f"{sparsity:.3f}")
    last = step == total_steps
    if step % eval_every == 0 or last:
      scores = evaluate_and_keep(step, sparsity)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", sparsity=f"{sparsity:.3f}",
                      **{metric_name: f"{scores[metric_name]:.4f}"})
    if step % section.checkpoint_every == 0 or step % eval_every == 0 or last:
      ckpt.save(step, state, _meta(meta, config))
  bar.close()
  if scores is None:  # resumed a finished run
    scores = evaluate_and_keep(total_steps, sparsity)
  ckpt.close()
  best_ckpt.wait()
  writer.flush()

  summary = _finish(workdir, config, student_config, state, best_ckpt, meta, scores,
                    where if prunes else None, mode, step_mode, lead)
  writer.close()
  return summary


def _meta(meta: dict[str, Any], config) -> dict[str, Any]:
  return {**meta, "config": json.loads(config.to_json_best_effort())}


def _progress(total: int, initial: int, enabled: bool, desc: str):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
              dynamic_ncols=True, mininterval=1.0)


def _finish(workdir: Path, config, model_config, state, best_ckpt, meta, last_scores,
            where, mode: str, step_mode: str, lead: bool) -> dict[str, Any]:
  """Exports the selected params to ``hf/``, writes summary.json and the plot."""
  best = meta.get("best")
  params = state.params
  if best is not None and best["step"] != int(jax.device_get(state.step)):
    params = best_ckpt.restore(best["step"], {"params": checkpoint.abstract(state.params)})[0][
        "params"]
  params = jax.device_get(params)
  summary: dict[str, Any] = {
      "task": config.task, "mode": mode, "method": step_mode,
      "steps": int(jax.device_get(state.step)),
      "last_scores": last_scores,
      "selected": best or {"step": int(jax.device_get(state.step)), "scores": last_scores},
      "teacher_scores": meta.get("teacher_scores"),
  }
  report_all = masks_lib.sparsity_report(params)
  summary["params"] = report_all.size
  summary["nonzero_params"] = report_all.nonzero
  encoder = masks_lib.sparsity_report(params, masks_lib.BERT_ENCODER_MATRICES)
  summary["encoder_sparsity"] = encoder.sparsity
  summary["encoder_nonzero"] = encoder.nonzero
  summary["encoder_size"] = encoder.size
  if lead:
    out = models.export_hf(params, model_config, workdir / "hf",
                           tokenizer_from=config.model.removeprefix("random:"))
    summary["hf_export_bytes"] = _dir_bytes(out)
    summary["sparse_fp16_export_bytes"] = _sparse_export_bytes(params, model_config, workdir)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report.plot_run(workdir / "metrics.jsonl", workdir / "run.png",
                    title=f"{config.task} {step_mode}")
  return summary


def _sparse_export_bytes(params, model_config, workdir: Path) -> int:
  """Writes the compressed fp16 artifact (``model.sparse.safetensors``); its size."""
  from jaxprune import export
  return export.export_sparse(params, None, workdir / "model.sparse.safetensors", "float16",
                              config=model_config, dense_dtype="float16").file_bytes
