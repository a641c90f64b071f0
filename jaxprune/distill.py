"""Knowledge-distillation losses of SparseBERT (TinyBERT's task distillation).

Three terms, each a scalar, summed with per-term weights (1, 1, 1 in the reference):

* ``attention``: sum over student layers of the MSE between student and teacher
  attention *scores* (pre-softmax, scaled, additive -10000 padding mask applied).
  Entries ``<= -100`` are set to 0 in both first, so padded keys contribute 0 but still
  count in the mean over ``batch * heads * len * len``.
* ``hidden``: sum over the embedding output and every student layer output of the MSE,
  mean over ``batch * len * hidden`` (padding positions included).
* ``prediction``: soft cross-entropy ``mean(-softmax(t / T) * log_softmax(s / T))``, the
  mean running over batch AND classes, without a ``T**2`` factor (the reference); or,
  with ``prediction_loss="kl"``, the standard ``T**2 * KL(teacher || student)`` averaged
  over the batch. For a regression head (one logit) it is the MSE between the student's
  output and the GOLD label, as in the reference (the teacher's output is not used).

A student shallower than its teacher is matched with ``layer_map``: with
``k = teacher_layers // student_layers``, student layer ``i`` (0-based) takes the
teacher's attention of layer ``(i + 1) * k - 1`` and hidden state ``i * k`` (hidden
state 0 is the embedding output; the student's last state meets the teacher's last).

A narrower student (TinyBERT) learns the teacher's hidden states through a learned
linear map ``W_h`` (``hidden_map``: ``h_s @ kernel + bias``, one map shared by the
embedding output and every layer, as TinyBERT's code does). It is trained with the
student: in a train state it lives under the top-level params key ``"distill"``
(``params["distill"]["hidden_map"]``), so it is sharded and checkpointed with the state,
the pruned weights (``masks.BERT_ENCODER_MATRICES``, chosen by path) never include it,
and ``split_params`` drops it before export.

A student with fewer heads (``A_s`` dividing the teacher's ``A_t``) learns, in each of
its heads ``j``, the MEAN of the teacher's pre-softmax scores over heads
``j * g .. (j + 1) * g - 1`` (``g = A_t / A_s``; ``group_heads``). Chosen over
"prediction only when heads differ" so that a small dense student is distilled with
the same three terms as SparseBERT (the comparison the paper makes), and because it
reduces to the plain term when the counts are equal; padding survives the mean (every
head masks the same keys). A consecutive group is a convention, not a correspondence:
a student shrunk by importance keeps heads that need not sit in their group, so the
attention term starts higher and the student re-learns its patterns; set
``KDWeights(attention=0.0)`` to distil without it.

Every mean is a per-example mean weighted by ``weight`` (1 for a real row, 0 for
padding), so padded evaluation rows do not count; with all weights 1 (training batches)
it is the reference's plain mean over everything.

Given a ``token_mask`` (the batch's attention mask), the attention and hidden terms
instead average over real tokens only: (query, key) pairs of real tokens, and real
positions. The reference's mean over padding makes a term's scale depend on how much
padding a batch has (x2-x10 between batches when padding is trimmed per batch); this
keeps it fixed. It is not the reference's arithmetic, so the ``reference`` preset
leaves it off.

With ``attention_loss="kl"`` the attention term compares attention *distributions*
instead (MiniLM's self-attention distillation): per layer, ``KL(softmax(t) ||
softmax(s))`` over the keys of every (head, query) row, averaged over rows (real query
tokens with a ``token_mask``). Padded keys carry ~0 probability in both. The raw-score
MSE grows with the scores' scale (12-120x the prediction term on the CPU presets,
docs/recipes.md); the KL is bounded by the rows' entropies and is blind to a shift of a
whole row, which the softmax ignores.

This module imports only jax: ``import jaxprune`` stays light.

Example::

  s = student.apply(..., output_hidden_states=True, output_attention_scores=True)
  t = teacher.apply(..., output_hidden_states=True, output_attention_scores=True)
  total, terms = distillation_loss(s, t, labels=batch["labels"], weight=batch["weight"])
  terms  # {"attention": ..., "hidden": ..., "prediction": ...}
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "KDWeights",
    "PARAMS_KEY",
    "attention_kl",
    "attention_mse",
    "distillation_loss",
    "group_heads",
    "hidden_map_axes",
    "hidden_mse",
    "init_hidden_map",
    "kl_divergence",
    "label_cross_entropy",
    "layer_map",
    "map_hidden",
    "regression_mse",
    "soft_cross_entropy",
    "split_params",
]

# Attention scores at or below this are padding (the model adds -10000 there).
PADDING_THRESHOLD = -100.0
PREDICTION_LOSSES = ("reference", "kl")
# The attention term: MSE of the raw scores (the reference) or KL of the distributions.
ATTENTION_LOSSES = ("mse", "kl")
# What the attention and hidden MSEs average over: every entry (reference) or real tokens.
MEAN_OVER = ("all", "tokens")
# The top-level params key of the trainable distillation maps (W_h), beside the model's.
PARAMS_KEY = "distill"


class KDWeights(NamedTuple):
  """Weights of the distillation terms (a term whose weight is the number 0 is skipped).

  ``labels`` adds the gold-label cross-entropy of fine-tuning (0 in the reference);
  it helps a student whose teacher is weak or whose training set is small. A weight may
  also be a traced scalar (e.g. a schedule evaluated at the step): the term is then
  always computed.

  Example: ``KDWeights(attention=0.0)`` distills hidden states and predictions only.
  """
  attention: Any = 1.0
  hidden: Any = 1.0
  prediction: Any = 1.0
  labels: Any = 0.0


def is_active(weight: Any) -> bool:
  """False only for a weight that is statically zero (the term need not be computed)."""
  return not (isinstance(weight, (int, float)) and weight == 0)


def _weighted_mean(per_example: jax.Array, weight: jax.Array | None) -> jax.Array:
  """Mean over the leading (batch) axis, rows weighted by ``weight``."""
  per_example = per_example.astype(jnp.float32)
  if weight is None:
    return jnp.mean(per_example)
  weight = weight.astype(jnp.float32)
  # max(., tiny): an all-padding batch gives 0, not NaN.
  return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1e-12)


def _per_example_mean(x: jax.Array, where: jax.Array | None = None) -> jax.Array:
  """Mean of each example's entries; only where ``where`` (broadcast to ``x``) is 1."""
  if where is None:
    return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)
  where = jnp.broadcast_to(where.astype(x.dtype), x.shape).reshape(x.shape[0], -1)
  total = jnp.sum(x.reshape(x.shape[0], -1) * where, axis=-1)
  return total / jnp.maximum(jnp.sum(where, axis=-1), 1.0)


def attention_mse(student_scores: jax.Array, teacher_scores: jax.Array,
                  weight: jax.Array | None = None,
                  token_mask: jax.Array | None = None) -> jax.Array:
  """MSE of one layer's attention scores, padded entries (<= -100) zeroed in both.

  Args:
    student_scores: (batch, heads, len, len) pre-softmax scores of the student.
    teacher_scores: the teacher's scores, same shape.
    weight: optional (batch,) row weights.
    token_mask: optional (batch, len) 1 for real tokens: average over the (query, key)
      pairs of real tokens only, instead of over all ``heads * len * len`` entries.

  Returns:
    A float32 scalar: ``mean((where(s <= -100, 0, s) - where(t <= -100, 0, t)) ** 2)``.

  Example: ``attention_mse(s.attention_scores[0], t.attention_scores[1])``.
  """
  _check_same_shape("attention scores", student_scores, teacher_scores)
  s = student_scores.astype(jnp.float32)
  t = teacher_scores.astype(jnp.float32)
  s = jnp.where(s <= PADDING_THRESHOLD, 0.0, s)
  t = jnp.where(t <= PADDING_THRESHOLD, 0.0, t)
  pairs = None
  if token_mask is not None:
    pairs = token_mask[:, None, :, None] * token_mask[:, None, None, :]
  return _weighted_mean(_per_example_mean(jnp.square(s - t), pairs), weight)


def attention_kl(student_scores: jax.Array, teacher_scores: jax.Array,
                 weight: jax.Array | None = None,
                 token_mask: jax.Array | None = None) -> jax.Array:
  """KL(teacher || student) of one layer's attention distributions, mean over rows.

  Args:
    student_scores: (batch, heads, len, len) pre-softmax scores of the student (the
      padding mask already added, as ``BertOutput.attention_scores`` has it).
    teacher_scores: the teacher's scores, same shape.
    weight: optional (batch,) row weights.
    token_mask: optional (batch, len) 1 for real tokens: average over the rows of real
      query tokens only, instead of over all ``heads * len`` rows.

  Returns:
    A float32 scalar: the mean over (head, query) rows of
    ``sum_k softmax(t)_k * (log_softmax(t)_k - log_softmax(s)_k)``.

  Example: ``attention_kl(s.attention_scores[0], t.attention_scores[1])``.
  """
  _check_same_shape("attention scores", student_scores, teacher_scores)
  log_s = jax.nn.log_softmax(student_scores.astype(jnp.float32), axis=-1)
  log_t = jax.nn.log_softmax(teacher_scores.astype(jnp.float32), axis=-1)
  rows = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)  # (batch, heads, len)
  queries = None if token_mask is None else token_mask[:, None, :]
  return _weighted_mean(_per_example_mean(rows, queries), weight)


def hidden_mse(student_hidden: jax.Array, teacher_hidden: jax.Array,
               weight: jax.Array | None = None,
               token_mask: jax.Array | None = None) -> jax.Array:
  """MSE of one hidden state (batch, len, hidden), padding positions included unless a
  (batch, len) ``token_mask`` says which positions are real.

  Example: ``hidden_mse(s.hidden_states[0], t.hidden_states[0])`` (embeddings).
  """
  _check_same_shape("hidden states", student_hidden, teacher_hidden)
  diff = student_hidden.astype(jnp.float32) - teacher_hidden.astype(jnp.float32)
  positions = None if token_mask is None else token_mask[:, :, None]
  return _weighted_mean(_per_example_mean(jnp.square(diff), positions), weight)


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float = 1.0,
                       weight: jax.Array | None = None) -> jax.Array:
  """The reference prediction loss: ``mean(-softmax(t/T) * log_softmax(s/T))``.

  The mean runs over batch AND classes (so it is the usual soft cross-entropy divided
  by ``num_classes``) and there is no ``T**2`` factor, as in TinyBERT/SparseBERT.

  Example: ``soft_cross_entropy(s.logits, t.logits, temperature=1.0)``.
  """
  _check_same_shape("logits", student_logits, teacher_logits)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  return _weighted_mean(jnp.mean(-p_t * log_p_s, axis=-1), weight)


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array,
                  temperature: float = 1.0, weight: jax.Array | None = None) -> jax.Array:
  """The standard (Hinton) prediction loss: ``T**2 * KL(p_t || p_s)``, batch mean.

  Unlike ``soft_cross_entropy`` it is 0 when the student matches the teacher and its
  gradient scale does not change with ``T``.

  Example: ``kl_divergence(s.logits, t.logits, temperature=2.0)``.
  """
  _check_same_shape("logits", student_logits, teacher_logits)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return temperature ** 2 * _weighted_mean(kl, weight)


def regression_mse(predictions: jax.Array, labels: jax.Array,
                   weight: jax.Array | None = None) -> jax.Array:
  """MSE between a regression head's output ((batch,) or (batch, 1)) and gold labels.

  Example: ``regression_mse(s.logits, batch["labels"])`` (STS-B).
  """
  predictions = predictions.reshape(predictions.shape[0], -1)
  if predictions.shape[1] != 1:
    raise ValueError(f"regression predictions must have one output, got {predictions.shape}")
  diff = predictions[:, 0].astype(jnp.float32) - labels.astype(jnp.float32)
  return _weighted_mean(jnp.square(diff), weight)


def label_cross_entropy(logits: jax.Array, labels: jax.Array,
                        weight: jax.Array | None = None) -> jax.Array:
  """Cross-entropy with integer gold labels, the loss of fine-tuning (batch mean).

  Example: ``label_cross_entropy(s.logits, batch["labels"], batch["weight"])``.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_p, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]
  return _weighted_mean(nll, weight)


def group_heads(teacher_scores: jax.Array, student_heads: int) -> jax.Array:
  """The teacher's attention scores averaged over consecutive groups of heads.

  Args:
    teacher_scores: (batch, A_t, len, len) scores.
    student_heads: ``A_s``, a divisor of ``A_t``.

  Returns:
    (batch, A_s, len, len): head ``j`` is the mean of heads ``j*g .. (j+1)*g - 1``,
    ``g = A_t / A_s``. Padded keys stay ``<= -100`` (all heads mask the same keys).

  Example: scores of heads (a, b, c, d) grouped to 2 heads are ((a+b)/2, (c+d)/2).
  """
  batch, heads, *rest = teacher_scores.shape
  if student_heads < 1 or heads % student_heads:
    raise ValueError(f"cannot average {heads} teacher heads into {student_heads} student "
                     "heads: the student's count must divide the teacher's")
  grouped = teacher_scores.reshape(batch, student_heads, heads // student_heads, *rest)
  return jnp.mean(grouped.astype(jnp.float32), axis=2)


def init_hidden_map(rng: jax.Array, student_hidden: int, teacher_hidden: int,
                    kept: Sequence[int] | None = None, stddev: float = 0.02
                    ) -> dict[str, jax.Array]:
  """A fresh ``W_h``: ``{"kernel": (student_hidden, teacher_hidden), "bias": zeros}``.

  The kernel is N(0, ``stddev``) (TinyBERT's init), or, given ``kept`` (the teacher-width
  dimensions a shrunk student kept, ``models.plan_shrink(...).hidden``), the selection
  matrix ``kernel[i, kept[i]] = 1``: student dimension ``i`` starts as the teacher's
  dimension it was cut from.

  Example: ``init_hidden_map(jax.random.key(0), 192, 384)["kernel"].shape == (192, 384)``.
  """
  if kept is not None:
    if len(kept) != student_hidden:
      raise ValueError(f"kept has {len(kept)} dimensions, the student {student_hidden}")
    kernel = jnp.zeros((student_hidden, teacher_hidden)).at[
        jnp.arange(student_hidden), jnp.asarray(kept)].set(1.0)
  else:
    kernel = stddev * jax.random.normal(rng, (student_hidden, teacher_hidden))
  return {"kernel": kernel.astype(jnp.float32), "bias": jnp.zeros((teacher_hidden,), jnp.float32)}


def hidden_map_axes() -> dict[str, jax.sharding.PartitionSpec]:
  """Logical axis names of ``init_hidden_map``'s arrays (replicated by the default rules).

  Example::

    axes = {**models.logical_axes(model), PARAMS_KEY: {"hidden_map": hidden_map_axes()}}
  """
  P = jax.sharding.PartitionSpec
  return {"kernel": P("embed", "embed_out"), "bias": P("embed_out")}


def map_hidden(hidden_map: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """``x @ kernel + bias`` in float32: a student hidden state in the teacher's width."""
  return (jnp.einsum("...i,io->...o", x.astype(jnp.float32), hidden_map["kernel"])
          + hidden_map["bias"])


def split_params(params: Any) -> tuple[Any, dict[str, Any]]:
  """``(model params, distillation maps)``: a train state's params without and with
  only ``params[PARAMS_KEY]`` (``{}`` when absent).

  Example: ``model_params, maps = split_params(state.params); maps.get("hidden_map")``.
  """
  if not isinstance(params, dict) or PARAMS_KEY not in params:
    return params, {}
  return {k: v for k, v in params.items() if k != PARAMS_KEY}, params[PARAMS_KEY]


def layer_map(student_layers: int, teacher_layers: int) -> tuple[tuple[int, ...],
                                                                  tuple[int, ...]]:
  """Which teacher attention layers and hidden states each student one is matched to.

  Args:
    student_layers: number of student transformer layers.
    teacher_layers: number of teacher layers, a multiple of ``student_layers``.

  Returns:
    ``(attention, hidden)``: ``attention[i]`` is the teacher layer whose attention
    scores student layer ``i`` learns (``(i + 1) * k - 1``); ``hidden[j]`` is the teacher
    hidden state (0 = embeddings) that student state ``j`` learns (``j * k``), for
    ``j = 0 .. student_layers``.

  Example: ``layer_map(4, 12) == ((2, 5, 8, 11), (0, 3, 6, 9, 12))``.
  """
  if student_layers < 1 or teacher_layers < student_layers:
    raise ValueError(f"cannot map a {student_layers}-layer student to a "
                     f"{teacher_layers}-layer teacher")
  if teacher_layers % student_layers:
    raise ValueError(f"teacher layers ({teacher_layers}) must be a multiple of student "
                     f"layers ({student_layers})")
  k = teacher_layers // student_layers
  attention = tuple((i + 1) * k - 1 for i in range(student_layers))
  hidden = tuple(i * k for i in range(student_layers + 1))
  return attention, hidden


def distillation_loss(student: Any, teacher: Any, *, labels: jax.Array | None = None,
                      weight: jax.Array | None = None,
                      weights: KDWeights = KDWeights(), temperature: float = 1.0,
                      prediction_loss: str = "reference",
                      token_mask: jax.Array | None = None,
                      hidden_map: dict[str, jax.Array] | None = None,
                      attention_loss: str = "mse",
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The SparseBERT objective: weighted sum of the attention, hidden and prediction terms.

  Args:
    student: the student's forward output: anything with ``logits``, ``hidden_states``
      (embedding output + every layer) and ``attention_scores`` (every layer), e.g. a
      ``jaxprune.models.BertOutput``. States are only read for terms with weight != 0.
    teacher: the teacher's output, same fields; it may be deeper (see ``layer_map``),
      wider (give ``hidden_map``) and have more heads (a multiple of the student's:
      see ``group_heads``). Gradients are not stopped here: pass teacher outputs
      computed outside the grad.
    labels: gold labels, needed for a regression head (one logit), which learns them,
      and for a ``weights.labels`` term.
    weight: optional (batch,) row weights (0 = padding row).
    weights: per-term weights.
    temperature: softmax temperature of the prediction term.
    prediction_loss: ``"reference"`` (``soft_cross_entropy``: mean over batch and
      classes, no ``T**2``) or ``"kl"`` (``kl_divergence``: ``T**2 * KL``).
    token_mask: optional (batch, len) attention mask: average the attention and hidden
      terms over real tokens only (None: over everything, as the reference).
    hidden_map: optional ``W_h`` (``init_hidden_map``): student hidden states are
      mapped to the teacher's width before the hidden term.
    attention_loss: ``"mse"`` (``attention_mse`` of the raw scores: the reference) or
      ``"kl"`` (``attention_kl`` of the attention distributions).

  Returns:
    ``(total, {"attention": ..., "hidden": ..., "prediction": ...})``, float32 scalars
    (plus ``"labels"`` when ``weights.labels`` is not 0); a term with weight 0 is
    reported as 0.

  Example::

    total, terms = distillation_loss(s_out, t_out, labels=batch["labels"],
                                     weights=KDWeights(attention=0.0))
  """
  if prediction_loss not in PREDICTION_LOSSES:
    raise ValueError(f"prediction_loss {prediction_loss!r}: expected one of "
                     f"{PREDICTION_LOSSES}")
  if attention_loss not in ATTENTION_LOSSES:
    raise ValueError(f"attention_loss {attention_loss!r}: expected one of "
                     f"{ATTENTION_LOSSES}")
  zero = jnp.zeros((), jnp.float32)
  terms = {"attention": zero, "hidden": zero, "prediction": zero}
  attention, hidden = is_active(weights.attention), is_active(weights.hidden)

  if attention or hidden:
    s_layers = len(_required(student, "attention_scores" if attention
                             else "hidden_states", "student"))
    t_layers = len(_required(teacher, "attention_scores" if attention
                             else "hidden_states", "teacher"))
    if not attention:  # counted from hidden states: embeddings + layers
      s_layers, t_layers = s_layers - 1, t_layers - 1
    attention_map, hidden_layers = layer_map(s_layers, t_layers)
    if attention:
      s_att, t_att = student.attention_scores, teacher.attention_scores
      heads = s_att[0].shape[1]
      term = attention_mse if attention_loss == "mse" else attention_kl
      terms["attention"] = sum(
          term(s_att[i], t_att[j] if t_att[j].shape[1] == heads
               else group_heads(t_att[j], heads), weight, token_mask)
          for i, j in enumerate(attention_map))
    if hidden:
      s_hid = _required(student, "hidden_states", "student")
      t_hid = _required(teacher, "hidden_states", "teacher")
      if len(s_hid) != len(hidden_layers) or len(t_hid) != hidden_layers[-1] + 1:
        raise ValueError(f"hidden_states: got {len(s_hid)} student and {len(t_hid)} "
                         f"teacher states for {s_layers} / {t_layers} layers")
      fit = (lambda x: x) if hidden_map is None else functools.partial(map_hidden, hidden_map)
      terms["hidden"] = sum(hidden_mse(fit(s_hid[i]), t_hid[j], weight, token_mask)
                            for i, j in enumerate(hidden_layers))

  if is_active(weights.prediction) or is_active(weights.labels):
    s_logits = _required(student, "logits", "student")
    regression = s_logits.shape[-1] == 1
  if is_active(weights.prediction):
    if regression:  # regression head: learn the gold score
      if labels is None:
        raise ValueError("a regression student (one logit) needs the gold labels")
      terms["prediction"] = regression_mse(s_logits, labels, weight)
    else:
      t_logits = _required(teacher, "logits", "teacher")
      loss_fn = soft_cross_entropy if prediction_loss == "reference" else kl_divergence
      terms["prediction"] = loss_fn(s_logits, t_logits, temperature, weight)
  if is_active(weights.labels):
    terms["labels"] = zero  # a regression head learns the gold score in "prediction"
    if not regression:
      if labels is None:
        raise ValueError("KDWeights.labels needs the gold labels")
      terms["labels"] = label_cross_entropy(s_logits, labels, weight)

  total = sum((w * terms[name] for name, w in weights._asdict().items() if is_active(w)), zero)
  return total, terms


def _required(output: Any, field: str, who: str) -> Sequence[jax.Array] | jax.Array:
  value = getattr(output, field, None)
  if value is None:
    flag = {"attention_scores": "output_attention_scores=True",
            "hidden_states": "output_hidden_states=True"}.get(field, "a classification head")
    raise ValueError(f"the {who} output has no {field} (apply the model with {flag})")
  return value


def _check_same_shape(what: str, a: jax.Array, b: jax.Array) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{what}: student shape {a.shape} != teacher shape {b.shape}")
