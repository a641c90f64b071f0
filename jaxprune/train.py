"""Train state and the pure train / eval steps of the four training modes.

This module is one update, a pure function compiled once; the loop around it (data,
evaluation, checkpoints, exports) is ``jaxprune.trainer``, and the objects a step is
built from (optimizer, pruning transform, KD weights) come from ``jaxprune.recipe``.

=================  ===========================  ==========================================
mode               loss                         optimizer ``tx``
=================  ===========================  ==========================================
``finetune``       gold labels (the teacher)    dense
``distill_prune``  attention + hidden + logits  ends with ``prune_by_magnitude`` (SparseBERT)
``distill``        attention + hidden + logits  dense
``prune_labels``   gold labels                  ends with ``prune_by_magnitude`` (baseline)
=================  ===========================  ==========================================

Pruning lives entirely in the optimizer: its last transform keeps the masks in the
optimizer state and zeroes pruned weights in every update, so a step is just
``tx.update`` + ``optax.apply_updates``. A mode and an optimizer that disagree (a
pruning mode with a dense ``tx``, or the reverse) raise when the step is traced, so no
run silently trains dense.

Regression tasks (one logit) learn the gold score with an MSE in every mode (the
reference's prediction term for STS-B).

A student narrower than its teacher carries TinyBERT's hidden map ``W_h`` in its params
under ``distill.PARAMS_KEY`` (``params["distill"]["hidden_map"]``, see
``distill.init_hidden_map``): it is trained with the student and the steps hand the
model only the rest (``distill.split_params``).

The reference preset (TinyBERT heritage) is ``teacher_dropout=True`` here plus
``classifier_relu=True`` in both models' ``BertConfig``; the defaults are the standard
behaviour (teacher deterministic, no ReLU after the pooler).

Example::

  tx = optax.chain(bert_adam(3e-5), prune_by_magnitude(cubic_sparsity(0.9, steps), where))
  state = create_train_state(student_params, tx, jax.random.key(42))
  train_step = jax.jit(make_train_step(student, tx, mode="distill_prune", teacher=teacher))
  state, metrics = train_step(state, teacher_params, batch)
  logits = jax.jit(make_eval_step(student))(state.params, batch)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxprune import distill
from jaxprune import masks as masks_lib
from jaxprune import transforms

__all__ = ["MODES", "TrainState", "create_train_state", "make_eval_step", "make_train_step"]

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

# mode -> (distills from a teacher, prunes)
MODES: dict[str, tuple[bool, bool]] = {
    "finetune": (False, False),
    "distill_prune": (True, True),
    "distill": (True, False),
    "prune_labels": (False, True),
}


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes, all arrays (orbax saves and restores it as is).

  Attributes:
    step: int32 scalar, optimizer steps done.
    params: the trained model's params (a nested dict).
    opt_state: the optimizer state; in pruning modes it holds the masks.
    rng: uint32 raw key data (``jax.random.key_data``) of the run's base key; step ``t``
      draws its dropout keys from ``fold_in(rng, t)``, so a resumed run replays them.
  """
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array


def create_train_state(params: Any, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """A fresh state at step 0 (pure: jit it with ``out_shardings`` to shard it).

  Args:
    params: initial params of the trained model.
    tx: the optimizer (for pruning modes, a chain ending with ``prune_by_magnitude``).
    rng: a typed key (``jax.random.key``) or raw uint32 key data.

  Example: ``state = create_train_state(params, optax.adamw(1e-4), jax.random.key(0))``.
  """
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  # Host (numpy) params become jax arrays, so that a jitted step sees the same argument
  # kinds at step 1 as later and compiles once.
  params = jax.tree.map(jnp.asarray, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jnp.asarray(rng, jnp.uint32))


def make_train_step(student: nn.Module, tx: optax.GradientTransformation, *,
                    mode: str = "distill_prune", teacher: nn.Module | None = None,
                    kd_weights: distill.KDWeights = distill.KDWeights(),
                    temperature: float = 1.0, prediction_loss: str = "reference",
                    teacher_dropout: bool = False,
                    kd_mean_over: str = "all",
                    attention_loss: str = "mse",
                    learning_rate: optax.ScalarOrSchedule | None = None,
                    prune_where: masks_lib.Where = masks_lib.BERT_ENCODER_MATRICES,
                    ) -> Callable[[TrainState, Any, Batch], tuple[TrainState, Metrics]]:
  """Builds the pure ``train_step(state, teacher_params, batch) -> (state, metrics)``.

  Args:
    student: the trained Flax model (``BertForSequenceClassification``).
    tx: the optimizer that ``state.opt_state`` belongs to.
    mode: one of ``MODES``.
    teacher: the teacher model (distillation modes); it may be deeper than the student
      (see ``distill.layer_map``), have more heads (``distill.group_heads``) and be
      wider, if ``state.params["distill"]["hidden_map"]`` holds a ``W_h``.
    kd_weights: weights of the attention, hidden, prediction and gold-label terms; each
      a float or an optax-style schedule of the step (``count -> weight``), e.g. to
      switch the intermediate terms off for a final prediction-only phase.
    temperature: softmax temperature of the prediction term.
    prediction_loss: ``"reference"`` or ``"kl"`` (see ``distill.distillation_loss``).
    teacher_dropout: run the teacher with dropout on (the reference's quirk).
    kd_mean_over: ``"all"`` (the reference: attention and hidden MSEs averaged over
      every entry, padding included) or ``"tokens"`` (over real tokens only).
    attention_loss: ``"mse"`` (the reference: raw attention scores) or ``"kl"``
      (attention distributions; see ``distill.distillation_loss``).
    learning_rate: the optimizer's learning rate (a float or a schedule of the step) for
      the ``learning_rate`` metric; if None it is read from an ``inject_hyperparams``
      state inside ``opt_state``.
    prune_where: the ``where`` given to ``prune_by_magnitude``: which leaves count as
      prunable in the ``sparsity`` metric (masks of other leaves are all True).

  Returns:
    ``train_step(state, teacher_params, batch, prune_event=None)``; ``teacher_params``
    is ignored (pass None) in label modes; ``prune_event`` (a static Python bool, or
    None to decide in the graph) is forwarded to ``prune_by_magnitude``: see its
    docstring for why a host-side flag is faster. Metrics
    (float32 scalars): ``loss``, ``grad_norm`` (global norm of the raw gradients),
    ``learning_rate``, ``sparsity`` (fraction of pruned prunable weights, 0 when
    dense) and, in distillation modes, ``attention_loss``, ``hidden_loss``,
    ``prediction_loss`` (each unweighted; 0 when not computed) and ``labels_loss``
    when its weight is not 0.

  Example::

    step = jax.jit(make_train_step(model, tx, mode="finetune"), donate_argnums=0)
    state, metrics = step(state, None, batch)
  """
  if mode not in MODES:
    raise ValueError(f"mode {mode!r}: expected one of {sorted(MODES)}")
  distills, prunes = MODES[mode]
  if distills and teacher is None:
    raise ValueError(f"mode {mode!r} needs a teacher model")
  if kd_mean_over not in distill.MEAN_OVER:
    raise ValueError(f"kd_mean_over {kd_mean_over!r}: expected one of {distill.MEAN_OVER}")
  if prediction_loss not in distill.PREDICTION_LOSSES:
    raise ValueError(f"prediction_loss {prediction_loss!r}: expected one of "
                     f"{distill.PREDICTION_LOSSES}")
  if attention_loss not in distill.ATTENTION_LOSSES:
    raise ValueError(f"attention_loss {attention_loss!r}: expected one of "
                     f"{distill.ATTENTION_LOSSES}")
  regression = student.config.num_labels == 1
  need_attention = distills and distill.is_active(kd_weights.attention)
  need_hidden = distills and distill.is_active(kd_weights.hidden)

  def forward(model, params, batch, deterministic, rng, **outputs):
    return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"], deterministic=deterministic,
                       rngs={"dropout": rng}, **outputs)

  def loss_fn(params, teacher_out, batch, rng, step):
    params, maps = distill.split_params(params)
    out = forward(student, params, batch, False, rng, output_hidden_states=need_hidden,
                  output_attention_scores=need_attention)
    if distills:
      with jax.named_scope("distillation_loss"):
        total, terms = distill.distillation_loss(
            out, teacher_out, labels=batch["labels"], weight=batch["weight"],
            weights=distill.KDWeights(*(w(step) if callable(w) else w for w in kd_weights)),
            temperature=temperature, prediction_loss=prediction_loss,
            token_mask=batch["attention_mask"] if kd_mean_over == "tokens" else None,
            hidden_map=maps.get("hidden_map"), attention_loss=attention_loss)
      return total, {f"{k}_loss": v for k, v in terms.items()}
    if regression:
      return distill.regression_mse(out.logits, batch["labels"], batch["weight"]), {}
    return distill.label_cross_entropy(out.logits, batch["labels"], batch["weight"]), {}

  # Its own jit: the pruning-event and plain variants of the step (two programs, as
  # `prune_event` is static) share one trace of the models, forward and backward, which
  # is most of a step's tracing (BERT-base: the second program's trace 4.2-5.0 -> 1.4-1.7
  # CPU-s, bench/trace_step.py). XLA inlines the call: a tiny prune run's metrics and
  # export came out bit-identical.
  @jax.jit
  def loss_and_grads(params, teacher_params, batch, rng, step):
    student_rng, teacher_rng = jax.random.split(rng)
    teacher_out = None
    # The named scopes label the ops in profiles (bench/profile_step.py) at no cost.
    if distills:
      with jax.named_scope("teacher"):
        teacher_out = jax.lax.stop_gradient(forward(
            teacher, teacher_params, batch, not teacher_dropout, teacher_rng,
            output_hidden_states=need_hidden, output_attention_scores=need_attention))
    return jax.value_and_grad(loss_fn, has_aux=True)(
        params, teacher_out, batch, student_rng, step)

  def train_step(state: TrainState, teacher_params: Any, batch: Batch,
                 prune_event: bool | None = None) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, terms), grads = loss_and_grads(state.params, teacher_params, batch, rng,
                                          state.step)
    hint = {} if prune_event is None else {"prune_event": prune_event}
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, state.opt_state, state.params, **hint)
      params = optax.apply_updates(state.params, updates)
    with jax.named_scope("metrics"):
      metrics = {
          "loss": loss,
          **terms,
          "grad_norm": optax.tree.norm(grads),
          "learning_rate": _learning_rate(opt_state, learning_rate, state.step),
          "sparsity": _sparsity(opt_state, params, prune_where, mode, prunes),
      }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, Batch], jax.Array]:
  """Builds the pure ``eval_step(params, batch) -> logits`` (dropout off, float32).

  Rows with ``weight == 0`` are padding: their logits are computed but must be ignored
  by the metrics. ``params`` may carry distillation maps (ignored).

  Example: ``logits = jax.jit(make_eval_step(model))(state.params, batch)``.
  """

  def eval_step(params: Any, batch: Batch) -> jax.Array:
    model_params, _ = distill.split_params(params)
    return model.apply({"params": model_params}, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"], deterministic=True).logits

  return eval_step


def _sparsity(opt_state: optax.OptState, params: Any, where: masks_lib.Where, mode: str,
              prunes: bool) -> jax.Array:
  """Fraction of pruned weights among the prunable ones, from the optimizer's masks."""
  is_prune_state = lambda x: isinstance(x, transforms.PruneByMagnitudeState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_prune_state)
           if is_prune_state(x)]
  if prunes and not found:
    raise ValueError(f"mode {mode!r} prunes, but the optimizer has no pruning masks: end "
                     "its optax.chain with jaxprune.prune_by_magnitude(...)")
  if not prunes and found:
    raise ValueError(f"mode {mode!r} trains dense, but the optimizer prunes: use "
                     f"{'distill_prune' if mode == 'distill' else 'prune_labels'}")
  if not prunes:
    return jnp.zeros((), jnp.float32)
  flags = jax.tree.leaves(masks_lib.prunable_tree(params, where))
  masks = [m for m, f in zip(jax.tree.leaves(transforms.find_masks(opt_state)), flags) if f]
  if not masks:
    raise ValueError(f"prune_where selects no params leaf: {where!r}")
  pruned = sum(jnp.sum(~m, dtype=jnp.int32) for m in masks)
  return pruned.astype(jnp.float32) / sum(m.size for m in masks)


def _learning_rate(opt_state: optax.OptState, learning_rate: optax.ScalarOrSchedule | None,
                   step: jax.Array) -> jax.Array:
  """The learning rate of this step's update: the schedule at the pre-update count."""
  if learning_rate is not None:
    return jnp.asarray(learning_rate(step) if callable(learning_rate) else learning_rate)
  injected = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_injected)
              if _is_injected(s) and "learning_rate" in s.hyperparams]
  if not injected:
    raise ValueError("cannot find the learning rate: pass learning_rate= to "
                     "make_train_step or build the optimizer with optax.inject_hyperparams")
  return injected[0].hyperparams["learning_rate"]


def _is_injected(x: Any) -> bool:
  return isinstance(x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
