"""The run configuration: one ml_collections ``ConfigDict`` with a comment per field.

Config files under ``configs/`` start from :func:`base_config` and change what their
setting needs; :func:`parse_arg` reads big_vision-style ``file.py:key=value,...``
arguments; :func:`validate` turns bad values into one-line ``ConfigError``s before any
work starts.

Example::

  config = base_config()
  config.task = "RTE"
  config.prune.sparsity = 0.95
  validate(config, mode="prune")
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from jaxprune.errors import ConfigError

__all__ = ["ConfigError", "RESUMABLE_CHANGES", "base_config", "check_resume", "demo_config", "student_recipe", "train_section",
           "parse_arg", "validate"]


def train_section(**changes) -> ml_collections.ConfigDict:
  """Optimisation settings of one training run (the teacher's or the student's)."""
  c = ml_collections.ConfigDict()
  # Global batch size (over all devices and hosts).
  c.batch_size = 32
  # Training length in epochs over the training split; ignored when num_steps > 0.
  c.epochs = 3.0
  # Training length in optimizer steps (0: derived from epochs).
  c.num_steps = 0
  # "adamw": AdamW, linear warmup then linear decay, global-norm clipping.
  # "bert_adam": the reference BertAdam (no bias correction, per-tensor clipping, constant lr).
  c.optimizer = "adamw"
  # Peak learning rate.
  c.lr = 5e-5
  # Fraction of the steps spent warming up (adamw only).
  c.warmup_ratio = 0.1
  # Decoupled weight decay, not applied to biases and LayerNorm.
  c.weight_decay = 0.01
  # Gradient clipping norm (global for adamw, per tensor for bert_adam).
  c.clip_norm = 1.0
  # Dropout of the trained model (hidden and attention).
  c.dropout = 0.1
  # Evaluate on dev every this many steps (0: once per epoch) and at the end.
  c.eval_every = 0
  # Write a checkpoint every this many steps (and at every eval and at the end).
  c.checkpoint_every = 200
  # Log training metrics every this many steps.
  c.log_every = 10
  c.update(changes)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Defaults: MiniLM-L6 on SST-2 on a CPU, 90% encoder sparsity."""
  config = ml_collections.ConfigDict()
  # GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI).
  config.task = "SST-2"
  # Where the data comes from: "tsv" (glue_dir) or "tfds" (tensorflow-datasets glue/<task>).
  config.data_source = "tsv"
  # A glue_data folder (<TASK>/train.tsv ...); "" = $JAXPRUNE_GLUE_DIR or ../shared/data/glue.
  config.glue_dir = ""
  # Training split: "train", or "train_aug" written by `jaxprune --mode=augment`.
  config.train_split = "train"
  # Folder holding <TASK>/train_aug.tsv from `jaxprune --mode=augment` ("" = glue_dir;
  # with augment_copies > 0: "" = <workdir>/augmented).
  config.aug_dir = ""
  # mode=prune trains on a TinyBERT-style augmentation of the training split with this
  # many draws per text (0: off), written to aug_dir on first use and reused after.
  config.augment_copies = 0
  # Use a seeded random subset of this many training examples (0: all).
  config.train_subsample = 0
  # Use the first this many dev examples (0: all; only for quick tests).
  config.dev_subsample = 0
  # Tokens per example (pairs truncated longest-first).
  config.max_seq_len = 128
  # Cut each batch's all-padding columns, rounding its length up to a multiple of this
  # (0: always max_seq_len, as the reference; the attention-score MSE then averages over
  # the padded positions too, so its scale depends on this). Every process cuts to the
  # length of the whole global batch.
  config.trim_padding_to = 0
  # Batch examples of similar length together, within windows of this many batches
  # (0: off). With trim_padding_to it cuts most padding on short-sentence tasks.
  config.group_by_length = 0
  # Examples per evaluation batch (global).
  config.eval_batch_size = 128
  # The pre-trained checkpoint: the student's init (mode=prune) and the teacher's (finetune).
  # "random:<checkpoint>" initialises that architecture randomly (with model_overrides).
  config.model = "minilm-l6"
  # Overrides of the model config (e.g. {"num_hidden_layers": 4} with "random:...").
  config.model_overrides = ml_collections.ConfigDict()
  # "float32", or "bfloat16": mixed precision (the path for TPUs and GPUs). Matmuls and
  # activations of the student and the teacher in bfloat16; params, gradients, optimizer
  # state and masks stay float32, softmax, LayerNorm statistics and every loss in float32.
  config.precision = "float32"
  # A smaller dense student cut out of `model` before training (jaxprune.models.shrink;
  # 0 keeps that size): the small-dense counterpart of SparseBERT (use it with
  # method="distill"). Units are kept by weight magnitude; a narrower student learns the
  # teacher's hidden states through a learned linear map W_h, dropped at export.
  config.student = ml_collections.ConfigDict()
  # Layers kept, uniformly spaced and ending at the last one (TinyBERT's layer map).
  config.student.layers = 0
  # Attention heads kept per layer; the width follows: hidden = heads * head_dim.
  config.student.heads = 0
  # FFN neurons kept per layer.
  config.student.intermediate = 0
  # Hidden (residual) dimensions kept; a multiple of head_dim (= heads * head_dim if both).
  config.student.hidden = 0
  # The teacher for mode=prune: a finetune workdir or a fine-tuned HF checkpoint.
  config.teacher = ""
  # What mode=prune trains: "distill_prune" (SparseBERT), "prune_labels" (magnitude
  # pruning on gold labels, the paper's baseline) or "distill" (dense distillation).
  config.method = "distill_prune"
  # Seed of parameter init, dropout and data order.
  config.seed = 42
  # Checkpoints kept in <workdir>/checkpoints (the newest ones).
  config.keep_checkpoints = 2
  # How the teacher is fine-tuned (mode=finetune).
  config.finetune = train_section(lr=5e-5, epochs=3.0)
  # How the student is pruned and distilled (mode=prune).
  config.train = train_section(lr=1e-4, epochs=3.0)

  config.prune = ml_collections.ConfigDict()
  # Final fraction of zeros in every prunable matrix.
  config.prune.sparsity = 0.9
  # Which weights are pruned: regexes over "/"-joined param paths ("bert_encoder": the
  # 6 encoder matrices of every layer, as the paper).
  config.prune.where = "bert_encoder"
  # "cubic" (ends exactly at the target) or "reference" (the reference's arithmetic).
  config.prune.schedule = "cubic"
  # Number of mask updates over the ramp (the reference: 100).
  config.prune.events = 100
  # First step of the ramp.
  config.prune.begin_step = 0
  # Fraction of the training steps over which sparsity ramps up; the rest trains at the
  # target sparsity (the reference: 1.0, i.e. the target is reached at the last step).
  config.prune.ramp_fraction = 0.7
  # "per_matrix" (the paper) or "global" magnitude ranking.
  config.prune.scope = "per_matrix"
  # "unstructured", "n:m" (e.g. "2:4") or "block:RxC" (e.g. "block:4x4").
  config.prune.pattern = "unstructured"
  # Keep every weight tied with the k-th largest (reference) instead of exactly k.
  config.prune.keep_ties = False

  config.distill = ml_collections.ConfigDict()
  # Weights of the attention-score, hidden-state and prediction terms.
  config.distill.attention_weight = 1.0
  config.distill.hidden_weight = 1.0
  config.distill.prediction_weight = 1.0
  # Softmax temperature of the prediction term.
  config.distill.temperature = 1.0
  # "reference": mean soft cross-entropy over batch and classes; "kl": KL * T^2.
  config.distill.prediction_loss = "reference"
  # Weight of the gold-label cross-entropy added to the distillation loss (reference: 0).
  config.distill.label_weight = 0.0
  # Fraction of the steps after which the attention and hidden terms are switched off:
  # TinyBERT's two stages (intermediate layers, then predictions) in one run; 1.0: never.
  config.distill.intermediate_until = 1.0
  # Average the attention and hidden MSEs over "all" entries, padding included (the
  # reference), or over real "tokens" only (scale independent of padding; use it with
  # trim_padding_to, which changes the padding from batch to batch).
  config.distill.mean_over = "all"
  # The attention term: "mse" of the raw scores (the reference) or "kl" of the attention
  # distributions (MiniLM's; scale independent of the scores', docs/recipes.md).
  config.distill.attention_loss = "mse"
  # Keep the teacher's dropout active during distillation (a reference quirk).
  config.distill.teacher_dropout = False
  # ReLU between the pooler and the classifier, teacher and student (a reference quirk).
  config.distill.classifier_relu = False

  # Device mesh (data, model); -1 takes the remaining devices.
  config.mesh_shape = (-1, 1)
  # Multi-host: coordinator "host:port", or "auto" (JAX finds it: TPU pod slices);
  # empty: a single process.
  config.coordinator_address = ""
  config.num_processes = 1
  config.process_id = 0
  # Seconds without a heartbeat after which the other processes give up on a dead one.
  config.heartbeat_timeout = 100
  # With several processes, agree on a preemption signal (SIGTERM/SIGINT) every this many
  # steps: the agreement is a collective, and one per step would make every host wait
  # for its device. A signal is acted on up to this many steps late (1: every step).
  config.preemption_check_every = 10
  # JAX's persistent compilation cache, so that a run resumed after a preemption (or the
  # next run of the same shapes) loads its compiled steps instead of compiling again:
  # "auto" = $JAX_COMPILATION_CACHE_DIR if set, else <workdir>/xla_cache (gs:// works);
  # a path (local or gs://); or "" for none.
  config.compilation_cache_dir = "auto"
  # What a run leaves for people besides metrics.jsonl, summary.json and the exports:
  # TensorBoard events under <workdir>/tb (with tensorboardX) and run.png (loss terms,
  # sparsity and dev metric, with matplotlib). Together ~2.5 CPU-s per run on 2 cores
  # (imports and drawing; tests/README.md): configs/tiny.py turns both off.
  config.tensorboard = True
  config.plot = True
  return config


def demo_config() -> ml_collections.ConfigDict:
  """The README's demo: MiniLM-L6 teacher vs 90%-sparse student on SST-2, on a CPU.

  See configs/demo.py for the command, runtime and result.
  """
  config = base_config()
  config.task = "SST-2"
  config.train_subsample = 40000
  config.max_seq_len = 64
  config.trim_padding_to = 16
  config.group_by_length = 50
  config.finetune.epochs = 0.5
  config.finetune.lr = 5e-5
  config.finetune.eval_every = 200
  # The student sees each of the 40,000 sentences once; 90% sparse, it underfits rather
  # than overfits, so the recipe's lr 3e-4 without dropout suits it (and its attention
  # and hidden terms off for the last 20% of the steps: +1.5 points here).
  config.train.epochs = 1.0
  config.train.eval_every = 250
  config.prune.sparsity = 0.9
  return student_recipe(config)


def student_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets ``config``'s student to the SparseBERT recipe measured on MRPC (docs/recipes.md).

  The student is distilled at lr 3e-4 without dropout, the sparsity ramping over the
  first half of its steps; the loss is the KL of the predictions plus the gold-label
  cross-entropy, with the attention and hidden MSEs averaged over real tokens and
  switched off for the last 20% of the steps.
  The reference preset (configs/reference.py) keeps the paper's settings instead.
  Changes ``config`` in place and returns it.

  Example::

    config = student_recipe(base_config())
    config.task, config.prune.sparsity = "MRPC", 0.95
  """
  config.train.lr = 3e-4
  config.train.dropout = 0.0
  config.prune.ramp_fraction = 0.5
  config.distill.prediction_loss = "kl"
  config.distill.label_weight = 1.0
  config.distill.mean_over = "tokens"
  config.distill.intermediate_until = 0.8
  return config


def _coerce(value: str):
  low = value.lower()
  if low in ("true", "false"):
    return low == "true"
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses ``"task=rte,sparsity=0.9,runlocal"`` into a ConfigDict over ``defaults``.

  ``key`` alone means ``key=True``. Unknown keys are errors.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in out:
      raise ConfigError(f"config argument {key!r}: expected one of {sorted(out.keys())}")
    new = _coerce(value.strip()) if value else True
    old = out[key]
    number = isinstance(new, (int, float)) and not isinstance(new, bool)
    if isinstance(old, bool) and not isinstance(new, bool):
      raise ConfigError(f"config argument {key}={value!r}: expected true or false")
    if isinstance(old, float) and not number:
      raise ConfigError(f"config argument {key}={value!r}: expected a number")
    if isinstance(old, int) and not isinstance(old, bool) and (
        not isinstance(new, int) or isinstance(new, bool)):
      raise ConfigError(f"config argument {key}={value!r}: expected an integer")
    new = float(new) if isinstance(old, float) else str(value) if isinstance(old, str) else new
    out[key] = new
  return out


# Allowed values of config.precision (the compute dtype of the models).
PRECISIONS = ("float32", "bfloat16")


# Fields a resumed run may change: how often it evaluates, saves and logs, where its
# inputs live, how it is spread over hosts and devices (checkpoints reshard), and which
# reports it draws. Every other field shapes the training itself and must match the
# checkpoint's (README, "Resuming"). Sections ending in "." match every field below them.
RESUMABLE_CHANGES = (
    "finetune.eval_every", "finetune.checkpoint_every", "finetune.log_every",
    "train.eval_every", "train.checkpoint_every", "train.log_every",
    "keep_checkpoints", "eval_batch_size", "glue_dir", "aug_dir", "mesh_shape",
    "coordinator_address", "num_processes", "process_id", "heartbeat_timeout",
    "preemption_check_every", "compilation_cache_dir", "tensorboard", "plot",
)
# Sections that do not take part in a mode's training (a teacher's run ignores the
# pruning and distillation settings of the config file it shares with its student).
_UNUSED_IN_MODE = {
    "finetune": ("train.", "prune.", "distill.", "student.", "teacher", "method",
                 "augment_copies", "aug_dir"),
    "prune": ("finetune.",),
}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def check_resume(saved: dict[str, Any] | None, config: ml_collections.ConfigDict,
                 mode: str) -> None:
  """Refuses to resume a checkpoint written under another training configuration.

  ``saved`` is the config stored with the checkpoint (its JSON form). A field that
  shapes training (sparsity, schedule, steps, lr, KD weights, task, model, ...) and
  differs would make the resumed run a mix of two runs; `RESUMABLE_CHANGES` may differ.
  Fields the checkpoint predates are not compared.

  Raises:
    ConfigError: one line naming the first differing field, its saved and its new value.

  Example: ``check_resume(meta["config"], config, "prune")``.
  """
  if not saved:
    return
  now = _flat(json.loads(config.to_json_best_effort()))
  ignored = RESUMABLE_CHANGES + _UNUSED_IN_MODE.get(mode, ())
  for field, before in _flat(saved).items():
    if field not in now or any(field == f or (f.endswith(".") and field.startswith(f))
                               for f in ignored):
      continue
    if now[field] != before:
      raise ConfigError(
          f"this workdir's checkpoints were trained with {field}={before!r}, the command "
          f"says {now[field]!r}: resume with the same settings, or use a new --workdir "
          "(only eval, checkpoint and log cadence, paths and the mesh may change)")


def validate(config: ml_collections.ConfigDict, mode: str) -> None:
  """Raises ``ConfigError`` (one line) for values that cannot work, before any work.

  Builds the run's recipe (``jaxprune.recipe``) for a nominal length, so every name
  and number that becomes an object (optimizer, schedule, pattern, KD weights) is
  checked by the code that will use it.

  Example: ``validate(base_config(), mode="finetune")``.
  """
  from jaxprune import recipe
  from jaxprune.data import tasks

  try:
    tasks.get_task(config.task)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not 8 <= config.max_seq_len <= 512:
    raise ConfigError(f"max_seq_len={config.max_seq_len}: expected 8..512")
  if config.train_subsample < 0 or config.dev_subsample < 0:
    raise ConfigError(f"train_subsample={config.train_subsample}, dev_subsample="
                      f"{config.dev_subsample}: expected >= 0")
  if config.augment_copies < 0:
    raise ConfigError(f"augment_copies={config.augment_copies}: expected >= 0")
  if config.eval_batch_size < 1:
    raise ConfigError(f"eval_batch_size={config.eval_batch_size}: expected >= 1")
  recipe.one_of("data_source", config.data_source, ("tsv", "tfds"))
  recipe.one_of("precision", config.precision, PRECISIONS)
  recipe.one_of("train_split", config.train_split, ("train", "train_aug"))
  for name in ("finetune", "train"):
    t = config[name]
    if t.batch_size < 1:
      raise ConfigError(f"{name}.batch_size={t.batch_size}: expected >= 1")
    if t.num_steps < 0 or (t.num_steps == 0 and not t.epochs > 0):
      raise ConfigError(f"{name}: epochs={t.epochs} and num_steps={t.num_steps}: "
                        "expected a positive training length")
    if not 0.0 <= t.dropout < 1.0:
      raise ConfigError(f"{name}.dropout={t.dropout}: expected a value in [0, 1)")
    for every in ("eval_every", "checkpoint_every", "log_every"):
      if t[every] < 0 or (every != "eval_every" and t[every] == 0):
        raise ConfigError(f"{name}.{every}={t[every]}: expected >= 1"
                          + (" (or 0: once per epoch)" if every == "eval_every" else ""))
  for name in ("layers", "heads", "intermediate", "hidden"):
    value = config.student[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(f"student.{name}={value!r}: expected an int >= 0 (0: keep)")
  if config.preemption_check_every < 1:
    raise ConfigError(f"preemption_check_every={config.preemption_check_every}: "
                      "expected >= 1")
  if config.keep_checkpoints < 1:
    raise ConfigError(f"keep_checkpoints={config.keep_checkpoints}: expected >= 1")
  recipe.one_of("mode", mode, ("finetune", "prune"))
  recipe.check(config, mode)
  if mode == "prune" and config.method != "prune_labels" and not config.teacher:
    raise ConfigError("mode=prune needs a teacher: --config.teacher=<finetune workdir "
                      "or fine-tuned HF checkpoint>")

