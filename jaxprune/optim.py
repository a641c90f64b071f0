"""Optimizers: SparseBERT's ``BertAdam`` as an optax chain, and a modern AdamW default.

``BertAdam`` (pytorch-pretrained-bert, as TinyBERT and SparseBERT use it) is Adam
without bias correction, with gradient clipping to norm 1.0 *per tensor* and weight
decay added to the update before the learning rate:

  g <- g * min(1, max_norm / (||g|| + 1e-6))     (torch.nn.utils.clip_grad_norm_)
  m <- b1 * m + (1 - b1) * g
  v <- b2 * v + (1 - b2) * g * g
  u <- m / (sqrt(v) + eps) + wd * p              (wd only where the mask says so)
  p <- p - lr * u
"""

from __future__ import annotations

from collections.abc import Callable
import re
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from jaxprune import masks as masks_lib

PyTree = Any
MaskOrFn = Optional[Union[PyTree, Callable[[PyTree], PyTree]]]

_NORM_COMPONENT = re.compile(r"norm", re.IGNORECASE)


def default_weight_decay_mask(params: PyTree) -> PyTree:
  """``True`` where weight decay applies: everything but biases and norm parameters.

  Decided by path, like BERT's ``no_decay = ["bias", "LayerNorm.weight"]``: a leaf
  named ``bias`` is never decayed, nor is a ``scale`` (or ``bias``) under a component
  whose name contains ``norm`` (``LayerNorm``, ``layer_norm``, ``RMSNorm_0``...).

  Example:
    >>> default_weight_decay_mask({"dense": {"kernel": 0., "bias": 0.},
    ...                            "LayerNorm": {"scale": 0., "bias": 0.}})
    {'LayerNorm': {'bias': False, 'scale': False}, 'dense': {'bias': False, 'kernel': True}}
  """
  def decay(path, _):
    parts = masks_lib.path_str(path).split("/")
    if parts[-1] == "bias":
      return False
    return not (parts[-1] == "scale" and any(_NORM_COMPONENT.search(c) for c in parts[:-1]))
  return jax.tree_util.tree_map_with_path(decay, params)


def clip_by_norm_per_tensor(max_norm: float) -> optax.GradientTransformation:
  """Clips each leaf to L2 norm ``max_norm``, exactly like ``torch``'s per-parameter
  ``clip_grad_norm_``: ``g * min(1, max_norm / (||g|| + 1e-6))``.

  Example:
    >>> t = clip_by_norm_per_tensor(1.0)
    >>> u, _ = t.update({"a": jnp.array([3.0, 4.0])}, t.init(None))
    >>> [round(float(x), 4) for x in u["a"]]
    [0.6, 0.8]
  """
  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
      return (g * coef).astype(g.dtype)
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class ScaleByBertAdamState(NamedTuple):
  """First and second moments of `scale_by_bert_adam` (no count: no bias correction)."""
  mu: PyTree
  nu: PyTree


def scale_by_bert_adam(b1: float = 0.9, b2: float = 0.999,
                       eps: float = 1e-6) -> optax.GradientTransformation:
  """Adam's direction ``m / (sqrt(v) + eps)`` WITHOUT bias correction (BertAdam).

  Example:
    >>> t = scale_by_bert_adam()
    >>> u, _ = t.update({"a": jnp.array([2.0])}, t.init({"a": jnp.zeros(1)}))
    >>> round(float(u["a"][0]), 4)  # 0.1 * 2 / (sqrt(0.001 * 4) + 1e-6)
    3.1622
  """
  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p)
    return ScaleByBertAdamState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, ScaleByBertAdamState(mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(learning_rate: optax.ScalarOrSchedule = 3e-5, *, b1: float = 0.9,
              b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.01,
              max_grad_norm: float = 1.0,
              weight_decay_mask: MaskOrFn = default_weight_decay_mask
              ) -> optax.GradientTransformation:
  """SparseBERT's ``BertAdam``: no bias correction, per-tensor clipping, decoupled decay.

  The learning rate is constant unless a schedule is passed (the reference runs a
  constant 3e-5). Use ``jaxprune.adamw_warmup_linear`` for a modern default.

  Args:
    learning_rate: a float or an optax schedule.
    b1: first moment decay.
    b2: second moment decay.
    eps: added to ``sqrt(v)``.
    weight_decay: added to the update as ``wd * p`` before the learning rate.
    max_grad_norm: per-tensor clipping norm; ``<= 0`` disables clipping.
    weight_decay_mask: bool tree or ``params -> bool tree``; default: no decay for
      biases and LayerNorm parameters (`default_weight_decay_mask`).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import optax
    >>> opt = optax.chain(bert_adam(3e-5), prune_by_magnitude(0.5))  # doctest: +SKIP
  """
  parts = []
  if max_grad_norm > 0:
    parts.append(clip_by_norm_per_tensor(max_grad_norm))
  parts.append(scale_by_bert_adam(b1, b2, eps))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def warmup_linear_schedule(peak_value: float, total_steps: int,
                           warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``peak_value``, then linear decay to 0 at ``total_steps``.

  Example:
    >>> f = warmup_linear_schedule(1.0, total_steps=10, warmup_steps=2)
    >>> [round(float(f(t)), 3) for t in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
  """
  warmup_steps = min(max(int(warmup_steps), 0), total_steps)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_value, warmup_steps),
       optax.linear_schedule(peak_value, 0.0, max(total_steps - warmup_steps, 1))],
      [warmup_steps])


def adamw_warmup_linear(learning_rate: float, total_steps: int, *,
                        warmup_steps: Optional[int] = None, warmup_fraction: float = 0.1,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                        weight_decay_mask: MaskOrFn = default_weight_decay_mask
                        ) -> optax.GradientTransformation:
  """The modern fine-tuning default: global-norm clipping, then AdamW on a linear
  warmup/decay schedule (bias-corrected, decay skipping biases and LayerNorms).

  Args:
    learning_rate: peak learning rate.
    total_steps: steps until the learning rate reaches 0.
    warmup_steps: warmup length; default ``warmup_fraction * total_steps``.
    warmup_fraction: used when ``warmup_steps`` is None.
    b1: first moment decay.
    b2: second moment decay.
    eps: Adam epsilon.
    weight_decay: decoupled weight decay (multiplied by the learning rate, as AdamW).
    max_grad_norm: global clipping norm; ``<= 0`` disables clipping.
    weight_decay_mask: bool tree or ``params -> bool tree``.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> opt = adamw_warmup_linear(5e-5, total_steps=1000)
  """
  if warmup_steps is None:
    warmup_steps = int(round(warmup_fraction * total_steps))
  schedule = warmup_linear_schedule(learning_rate, total_steps, warmup_steps)
  parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=weight_decay_mask))
  return optax.chain(*parts)
