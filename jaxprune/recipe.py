"""The one place where a config becomes objects.

A run's config holds names and numbers; this module turns them into what the train
step uses: which weights are pruned (``prune.where``), the sparsity pattern, the
sparsity schedule, the optimizer chain (ending with the pruning transform when the
mode prunes) and the distillation weights (constants or schedules of the step).

``jaxprune.config.validate`` calls :func:`check`, which builds every one of them for a
nominal run length, so a bad value is rejected with a one-line ``ConfigError`` before
any model or data is loaded; the trainer calls the same functions with the real length.
The allowed values come from the modules that own them (``train.MODES``,
``distill.PREDICTION_LOSSES``, the mask scopes), never retyped here.

Example::

  config = base_config()
  recipe = build(config, mode="prune", total_steps=1000)
  recipe.tx, recipe.sparsity, recipe.kd_weights
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_collections
import optax

from jaxprune import distill
from jaxprune import masks as masks_lib
from jaxprune import optim
from jaxprune import schedules
from jaxprune import transforms
from jaxprune.errors import ConfigError

__all__ = ["PRUNE_WHERE", "OPTIMIZERS", "Recipe", "build", "check", "kd_weights",
           "make_optimizer", "one_of", "optimizer", "pattern", "prune_where", "sparsity_schedule", "step_mode"]

# config.prune.where -> the regexes over "/"-joined param paths it selects.
PRUNE_WHERE: dict[str, masks_lib.Where] = {"bert_encoder": masks_lib.BERT_ENCODER_MATRICES}
# config.<section>.optimizer values.
OPTIMIZERS = ("adamw", "bert_adam")
# The run length check() builds a recipe for (any positive number would do).
_NOMINAL_STEPS = 1000


class Recipe(NamedTuple):
  """What the train step of one run is built from.

  Attributes:
    mode: the train step's mode (a key of ``train.MODES``).
    tx: the optimizer; in pruning modes a chain ending with ``prune_by_magnitude``.
    learning_rate: its learning rate (a float or a schedule of the step).
    sparsity: the sparsity schedule (None when the mode trains dense).
    where: the prunable weights (``prune_by_magnitude``'s ``where``).
    kd_weights: the distillation weights, floats or schedules of the step.
  """
  mode: str
  tx: optax.GradientTransformation
  learning_rate: optax.ScalarOrSchedule
  sparsity: schedules.SparsitySchedule | None
  where: masks_lib.Where
  kd_weights: distill.KDWeights


def one_of(name: str, value: Any, allowed) -> None:
  """Raises ``ConfigError`` unless ``value`` is in ``allowed`` (the message lists them)."""
  if value not in allowed:
    names = [repr(a) for a in allowed]
    listed = " or ".join(names) if len(names) < 3 else f"one of {', '.join(names)}"
    raise ConfigError(f"{name}={value!r}: expected {listed}")


def step_mode(config: ml_collections.ConfigDict, mode: str) -> str:
  """The train step's mode: ``"finetune"``, or ``config.method`` for mode=prune."""
  from jaxprune import train  # flax: imported when a run is built, not by the core

  if mode == "finetune":
    return "finetune"
  methods = [m for m in train.MODES if m != "finetune"]
  one_of("method", config.method, methods)
  return config.method


def prune_where(name: str) -> masks_lib.Where:
  """The weights ``config.prune.where`` names (``"bert_encoder"``: the paper's 6 per layer)."""
  one_of("prune.where", name, tuple(PRUNE_WHERE))
  return PRUNE_WHERE[name]


def pattern(name: str) -> masks_lib.Pattern:
  """``"unstructured"`` -> None, ``"2:4"`` -> ``NM(2, 4)``, ``"block:4x4"`` -> ``Blocks(4, 4)``."""
  if name == "unstructured":
    return None
  if m := re.fullmatch(r"(\d+):(\d+)", str(name)):
    if 0 < int(m[1]) <= int(m[2]):
      return masks_lib.NM(int(m[1]), int(m[2]))
  elif m := re.fullmatch(r"block:(\d+)x(\d+)", str(name)):
    if int(m[1]) > 0 and int(m[2]) > 0:
      return masks_lib.Blocks(int(m[1]), int(m[2]))
  raise ConfigError(f"prune.pattern={name!r}: expected 'unstructured', 'N:M' with "
                    "0 < N <= M (e.g. '2:4') or 'block:RxC' (e.g. 'block:4x4')")


def sparsity_schedule(prune: ml_collections.ConfigDict,
                      total_steps: int) -> schedules.SparsitySchedule:
  """The cubic ramp over ``ramp_fraction`` of the steps after ``begin_step``."""
  if not 0.0 <= prune.sparsity < 1.0:
    raise ConfigError(f"prune.sparsity={prune.sparsity}: expected a value in [0, 1)")
  if not 0.0 < prune.ramp_fraction <= 1.0:
    raise ConfigError(f"prune.ramp_fraction={prune.ramp_fraction}: expected a value in (0, 1]")
  one_of("prune.schedule", prune.schedule, ("cubic", "reference"))
  if prune.events < 1:
    raise ConfigError(f"prune.events={prune.events}: expected >= 1")
  if not 0 <= prune.begin_step < total_steps:
    raise ConfigError(f"prune.begin_step={prune.begin_step}: expected 0 <= begin_step < "
                      f"the {total_steps} training steps")
  ramp = max(1, int(round(prune.ramp_fraction * (total_steps - prune.begin_step))))
  try:
    return schedules.cubic_sparsity(prune.sparsity, ramp, events=min(prune.events, ramp),
                                    begin=prune.begin_step,
                                    reference=prune.schedule == "reference")
  except ValueError as e:
    raise ConfigError(f"prune: {e}") from None


def optimizer(section: ml_collections.ConfigDict, total_steps: int, name: str = "train"
              ) -> tuple[optax.GradientTransformation, optax.ScalarOrSchedule]:
  """The dense optimizer of a training section (``config.<name>``) and its learning rate."""
  one_of(f"{name}.optimizer", section.optimizer, OPTIMIZERS)
  if not section.lr > 0:
    raise ConfigError(f"{name}.lr={section.lr}: expected > 0")
  if not 0.0 <= section.warmup_ratio < 1.0:
    raise ConfigError(f"{name}.warmup_ratio={section.warmup_ratio}: expected a value in "
                      "[0, 1)")
  if section.optimizer == "bert_adam":
    tx = optim.bert_adam(section.lr, weight_decay=section.weight_decay,
                         max_grad_norm=section.clip_norm)
    return tx, section.lr
  warmup = int(round(section.warmup_ratio * total_steps))
  lr = optim.warmup_linear_schedule(section.lr, total_steps, warmup)
  tx = optim.adamw_warmup_linear(section.lr, total_steps, warmup_steps=warmup,
                                 weight_decay=section.weight_decay,
                                 max_grad_norm=section.clip_norm)
  return tx, lr


def kd_weights(cfg: ml_collections.ConfigDict, total_steps: int) -> distill.KDWeights:
  """The distillation weights; with ``intermediate_until < 1`` the attention and hidden
  terms are switched off after that fraction of the steps (TinyBERT's two stages, in
  one run: intermediate layers first, then predictions only)."""
  one_of("distill.prediction_loss", cfg.prediction_loss, distill.PREDICTION_LOSSES)
  one_of("distill.mean_over", cfg.mean_over, distill.MEAN_OVER)
  one_of("distill.attention_loss", cfg.attention_loss, distill.ATTENTION_LOSSES)
  if not cfg.temperature > 0:
    raise ConfigError(f"distill.temperature={cfg.temperature}: expected > 0")
  if not 0.0 < cfg.intermediate_until <= 1.0:
    raise ConfigError(f"distill.intermediate_until={cfg.intermediate_until}: expected a "
                      "value in (0, 1]")
  weights = dict(attention=cfg.attention_weight, hidden=cfg.hidden_weight,
                 prediction=cfg.prediction_weight, labels=cfg.label_weight)
  for name, value in weights.items():
    if value < 0:
      raise ConfigError(f"distill.{name.removesuffix('s')}_weight={value}: expected >= 0")
  if cfg.intermediate_until < 1.0:
    boundary = int(round(cfg.intermediate_until * total_steps))
    for name in ("attention", "hidden"):
      if weights[name]:
        weights[name] = _until(float(weights[name]), boundary)
  return distill.KDWeights(**weights)


def _until(value: float, boundary: int) -> optax.Schedule:
  """``value`` for the steps before ``boundary`` (0-based count), then 0."""
  return lambda count: jnp.where(count < boundary, value, 0.0)


def make_optimizer(section: ml_collections.ConfigDict, total_steps: int,
                   prune: ml_collections.ConfigDict | None = None, prunes: bool = False,
                   name: str = "train"
                   ) -> tuple[optax.GradientTransformation, optax.ScalarOrSchedule,
                              schedules.SparsitySchedule | None]:
  """The optimizer of a run, its learning rate and (when ``prunes``) sparsity schedule;
  pruning runs end the chain with ``prune_by_magnitude`` configured by ``prune``."""
  tx, lr = optimizer(section, total_steps, name)
  if not prunes:
    return tx, lr, None
  sched = sparsity_schedule(prune, total_steps)
  one_of("prune.scope", prune.scope, masks_lib.SCOPES)
  tx = optax.chain(tx, transforms.prune_by_magnitude(
      sched, where=prune_where(prune.where), scope=prune.scope,
      ties="keep" if prune.keep_ties else "exact", pattern=pattern(prune.pattern)))
  return tx, lr, sched


def build(config: ml_collections.ConfigDict, mode: str, total_steps: int) -> Recipe:
  """Everything a run's train step needs, from its config (raises ``ConfigError``)."""
  smode = step_mode(config, mode)
  from jaxprune import train

  distills, prunes = train.MODES[smode]
  name = "finetune" if mode == "finetune" else "train"
  tx, lr, sched = make_optimizer(config[name], total_steps, config.prune, prunes, name)
  weights = kd_weights(config.distill, total_steps) if distills else distill.KDWeights()
  return Recipe(smode, tx, lr, sched, prune_where(config.prune.where), weights)


def check(config: ml_collections.ConfigDict, mode: str) -> None:
  """Builds the recipe for a nominal run length: raises ``ConfigError`` for bad values.

  The pruning and distillation settings are checked in every mode: one config file
  serves the teacher's run and the student's, and a typo should not wait for the second.
  """
  build(config, mode, _NOMINAL_STEPS)
  prune_where(config.prune.where)
  pattern(config.prune.pattern)
  one_of("prune.scope", config.prune.scope, masks_lib.SCOPES)
  sparsity_schedule(config.prune, _NOMINAL_STEPS)
  kd_weights(config.distill, _NOMINAL_STEPS)
  step_mode(config, "prune")
