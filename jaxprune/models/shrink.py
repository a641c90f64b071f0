"""Structured shrinking: a smaller dense BERT cut out of a bigger one.

``shrink(params, config, layers=..., heads=..., intermediate=..., hidden=...)`` returns an
ordinary smaller ``BertConfig`` and params of the same tree structure, so training,
checkpoints and ``export_hf`` work unchanged and transformers loads the export. It is
the small-dense counterpart of SparseBERT: the DistilBERT/TinyBERT-style student,
initialised from the pre-trained checkpoint.

What is kept
------------
*Units* are what is kept or dropped whole; each owns the weights that read or write it:

=================  ===================================================================
unit (``scores``)  weights it owns (the logical axis it indexes in ``models.bert``)
=================  ===================================================================
``hidden`` (H,)    a residual-stream dimension: its column of the word / position /
                   token-type embeddings, its entry of every LayerNorm, its row of
                   every matrix that reads the stream (query, key, value, FFN in,
                   pooler) and its column (+ bias) of every matrix that writes it
                   (attention output, FFN out) -- the ``embed`` axis
``heads`` (L, A)   one attention head of one layer: its ``head_dim`` columns (+ bias)
                   of query, key and value and its rows of the attention output
``intermediate``   one FFN neuron of one layer: its column (+ bias) of the FFN input
(L, I)             matrix and its row of the FFN output matrix -- the ``mlp`` axis
``pooler`` (H,)    one pooler output: its column (+ bias) of the pooler and its row
                   of the classifier
=================  ===================================================================

* ``layers``: an int ``n`` keeps layers ``(i + 1) * L // n - 1`` for ``i < n``: uniform
  spacing ending at the last layer (TinyBERT's ``g(m) = m * k``; with ``L = 12, n = 4``
  layers 2, 5, 8, 11). It is the layer each student layer is distilled towards by
  ``jaxprune.distill.layer_map`` (attention of teacher layer ``(i + 1) * k - 1``, hidden
  state ``(i + 1) * k``, i.e. that layer's output), so every student layer starts as
  the teacher layer it learns to imitate. A sequence keeps those layers (ascending,
  e.g. DistilBERT's ``range(0, 12, 2)``).
* ``heads``, ``intermediate``: per kept layer, that many highest-scoring units of
  that layer (the same count in every layer, as a ``BertConfig`` requires).
* ``hidden``: the highest-scoring residual dimensions, the same set in every layer (the
  residual stream is one space); the pooler keeps its ``hidden`` highest-scoring
  outputs (Hugging Face ties the pooler's width to ``hidden_size``).
* Ties go to the lower index; kept units stay in their original order.

Heads and width: Hugging Face's BERT has ``head_dim = hidden_size / num_heads``. Whole
heads keep their ``head_dim``, so ``n`` heads need ``hidden = n * head_dim``: given only
``heads``, ``hidden`` follows; given only ``hidden``, ``heads = hidden / head_dim``; any
other combination is a ``ValueError`` (keeping the width with fewer heads would change
``head_dim``, i.e. compute a different function, not a sub-network).

Exactness: dropping layers is exactly skipping them; dropping FFN neurons is exactly
zeroing their rows of the FFN output matrix. Dropping heads or hidden dimensions is not
exact: LayerNorm then normalises over fewer dimensions. Nothing removed returns the
same model.

Importance: by default the L2 norm of the weights a unit owns (``magnitude_scores``,
computed on the kept layers); or first-order Taylor scores from gradients on a few
training batches (``taylor_scores``), passed as ``scores`` (indexed by the ORIGINAL
layers; missing groups fall back to magnitude).

Example::

  model, params, config = from_pretrained("minilm-l6", num_labels=2)   # 6 x 384, 12 heads
  small, small_config = shrink(params, config, layers=3, heads=6, intermediate=768)
  small_config.hidden_size  # 192 = 6 heads * 32
  export_hf(small, small_config, "/tmp/minilm-3x192")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune.models import bert

__all__ = ["ShrinkPlan", "apply_plan", "encoder_weight_count", "magnitude_scores",
           "plan_shrink", "shrink", "taylor_scores", "uniform_layers"]

# Logical axis (models.bert) -> the unit group it indexes.
_AXIS_GROUPS = {"embed": "hidden", "heads": "heads", "mlp": "intermediate",
                "embed_out": "pooler"}
GROUPS = ("hidden", "heads", "intermediate", "pooler")
_LAYER = re.compile(r"(^|/)encoder/layer/(\d+)/")


class ShrinkPlan(NamedTuple):
  """Which units ``apply_plan`` keeps (original indices, ascending).

  Attributes:
    layers: kept layers.
    heads: per kept layer, its kept heads.
    intermediate: per kept layer, its kept FFN neurons.
    hidden: kept residual-stream dimensions.
    pooler: kept pooler outputs.
  """
  layers: tuple[int, ...]
  heads: tuple[tuple[int, ...], ...]
  intermediate: tuple[tuple[int, ...], ...]
  hidden: tuple[int, ...]
  pooler: tuple[int, ...]


def uniform_layers(total: int, keep: int) -> tuple[int, ...]:
  """Layers ``(i + 1) * total // keep - 1``: uniform spacing ending at the last layer.

  Example: ``uniform_layers(12, 4) == (2, 5, 8, 11)``; ``uniform_layers(6, 4) == (0, 2, 3, 5)``.
  """
  if not 1 <= keep <= total:
    raise ValueError(f"layers={keep}: expected 1..{total}")
  return tuple((i + 1) * total // keep - 1 for i in range(keep))


def encoder_weight_count(config: bert.BertConfig) -> int:
  """The encoder matrices' weights (the 6 SparseBERT prunes per layer):
  ``L * (4 * H * H + 2 * H * I)``. Example: 10,616,832 for MiniLM-L6 (6 x 384, FFN 1536)."""
  h, i = config.hidden_size, config.intermediate_size
  return config.num_hidden_layers * (4 * h * h + 2 * h * i)


def _flat(tree: Any) -> dict[str, Any]:
  """``{"a/b/kernel": leaf}``; ``PartitionSpec``s are leaves."""
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  return {masks_lib.path_str(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_spec)[0]}


def _specs(config: bert.BertConfig) -> dict[str, tuple[str | None, ...]]:
  """The logical axis names of every param of ``config``'s model."""
  return {k: tuple(v) for k, v in
          _flat(bert.logical_axes(bert.BertForSequenceClassification(config))).items()}


def _groups(path: str, spec: Sequence[str | None]) -> list[str | None]:
  """The unit group of each axis of the leaf at ``path``."""
  groups = [_AXIS_GROUPS.get(name) for name in spec]
  if path.startswith("classifier/"):  # it reads the pooler's outputs ("embed" by HF's tie)
    groups = ["pooler" if g == "hidden" else g for g in groups]
  return groups


def _unit_sums(tree: Any, config: bert.BertConfig) -> dict[str, np.ndarray]:
  """Per unit, the sum of ``tree``'s entries over the weights the unit owns.

  ``tree`` is shaped like the params of ``config`` (e.g. ``w ** 2``, or ``g * w``).
  """
  c = config
  specs = _specs(c)
  out = {"hidden": np.zeros(c.hidden_size), "pooler": np.zeros(c.hidden_size),
         "heads": np.zeros((c.num_hidden_layers, c.num_attention_heads)),
         "intermediate": np.zeros((c.num_hidden_layers, c.intermediate_size))}
  for path, leaf in _flat(tree).items():
    if path not in specs:
      raise ValueError(f"{path}: not a parameter of {c.num_hidden_layers}-layer BERT")
    leaf = np.asarray(jax.device_get(leaf), np.float64)
    for axis, group in enumerate(_groups(path, specs[path])):
      if group is None:
        continue
      sums = leaf.sum(axis=tuple(a for a in range(leaf.ndim) if a != axis))
      if group == "heads":
        sums = sums.reshape(c.num_attention_heads, c.head_dim).sum(-1)
      if group in ("heads", "intermediate"):
        out[group][int(_LAYER.search(path)[2])] += sums
      else:
        out[group] += sums
  return out


def magnitude_scores(params: Any, config: bert.BertConfig) -> dict[str, np.ndarray]:
  """The L2 norm of the weights each unit owns (see the module docstring).

  Returns:
    ``{"hidden": (H,), "pooler": (H,), "heads": (L, A), "intermediate": (L, I)}``.

  Example: ``magnitude_scores(params, config)["heads"][0]`` ranks layer 0's heads.
  """
  return {k: np.sqrt(v) for k, v in
          _unit_sums(jax.tree.map(lambda w: np.square(np.asarray(w, np.float64)), params),
                     config).items()}


def taylor_scores(loss_fn: Callable[[Any, Any], jax.Array], params: Any,
                  batches: Iterable[Any], config: bert.BertConfig) -> dict[str, np.ndarray]:
  """First-order Taylor importance (Molchanov et al. 2019) of every unit.

  Removing a unit changes the loss by about ``-sum(g * w)`` over the weights it owns;
  the score is that sum squared, averaged over ``batches``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (e.g. the label cross-entropy or the
      distillation loss of the model to shrink).
    params: the params of ``config`` to score.
    batches: a few training batches (any values ``loss_fn`` takes).
    config: the model's config.

  Returns:
    The scores, shaped as ``magnitude_scores``'s; pass them to ``shrink(scores=...)``.

  Example::

    loss = lambda p, b: label_cross_entropy(model.apply({"params": p}, b["input_ids"]).logits,
                                            b["labels"])
    small, small_config = shrink(params, config, heads=6,
                                 scores=taylor_scores(loss, params, batches[:4], config))
  """
  grad_fn = jax.jit(jax.grad(loss_fn))
  total, count = None, 0
  for batch in batches:
    g = grad_fn(params, batch)
    sums = _unit_sums(jax.tree.map(lambda a, b: jnp.asarray(a, jnp.float32) * b, g, params),
                      config)
    squared = {k: np.square(v) for k, v in sums.items()}
    total = squared if total is None else {k: total[k] + squared[k] for k in total}
    count += 1
  if not count:
    raise ValueError("taylor_scores needs at least one batch")
  return {k: v / count for k, v in total.items()}


def _top(scores: np.ndarray, k: int) -> tuple[int, ...]:
  """The ``k`` highest scores' indices, ascending; ties go to the lower index."""
  return tuple(sorted(int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:k]))


def _check_count(name: str, value: int, maximum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
      1 <= value <= maximum):
    raise ValueError(f"{name}={value!r}: expected an int in 1..{maximum}")
  return int(value)


def _widths(config: bert.BertConfig, heads: int | None, hidden: int | None
            ) -> tuple[int, int]:
  """(heads, hidden) of the shrunk model: whole heads keep their head_dim."""
  d = config.head_dim
  if heads is not None:
    heads = _check_count("heads", heads, config.num_attention_heads)
  if hidden is not None:
    hidden = _check_count("hidden", hidden, config.hidden_size)
  if heads is None and hidden is None:
    return config.num_attention_heads, config.hidden_size
  if hidden is None:
    return heads, heads * d
  if heads is None:
    if hidden % d:
      raise ValueError(f"hidden={hidden} is not a multiple of head_dim {d}: whole heads of "
                       f"{d} dims need hidden = heads * {d}")
    return hidden // d, hidden
  if hidden != heads * d:
    raise ValueError(f"heads={heads} with hidden={hidden}: Hugging Face BERT needs hidden "
                     f"= heads * head_dim = {heads * d} (head_dim {d} is kept)")
  return heads, hidden


def _layers(config: bert.BertConfig, layers: int | Sequence[int] | None) -> tuple[int, ...]:
  total = config.num_hidden_layers
  if layers is None:
    return tuple(range(total))
  if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
    return uniform_layers(total, int(layers))
  kept = tuple(int(i) for i in layers)
  if not kept or list(kept) != sorted(set(kept)) or not 0 <= kept[0] <= kept[-1] < total:
    raise ValueError(f"layers={list(kept)}: expected distinct ascending indices in "
                     f"0..{total - 1}")
  return kept


def _take_layers(params: Any, kept: Sequence[int]) -> Any:
  """The params with only the ``kept`` encoder layers, renumbered 0..len(kept)-1."""
  stack = params["bert"]["encoder"]["layer"]
  encoder = {**params["bert"]["encoder"],
             "layer": {str(new): stack[str(old)] for new, old in enumerate(kept)}}
  return {**params, "bert": {**params["bert"], "encoder": encoder}}


def plan_shrink(params: Any, config: bert.BertConfig, *,
                layers: int | Sequence[int] | None = None, heads: int | None = None,
                intermediate: int | None = None, hidden: int | None = None,
                scores: dict[str, np.ndarray] | None = None) -> ShrinkPlan:
  """Which units ``shrink`` keeps (arguments as ``shrink``'s), without cutting anything.

  Example: ``plan_shrink(params, config, heads=1).heads  # ((1,), (0,)): per layer``.
  """
  kept_layers = _layers(config, layers)
  n_heads, n_hidden = _widths(config, heads, hidden)
  n_ffn = config.intermediate_size if intermediate is None else _check_count(
      "intermediate", intermediate, config.intermediate_size)
  unknown = set(scores or {}) - set(GROUPS)
  if unknown:
    raise ValueError(f"scores: unknown groups {sorted(unknown)}; expected {list(GROUPS)}")
  given = {k: np.asarray(v) for k, v in (scores or {}).items()}
  for name, v in given.items():
    per_layer = name in ("heads", "intermediate")
    expected = ((config.num_hidden_layers,) if per_layer else ()) + (
        {"heads": config.num_attention_heads, "intermediate": config.intermediate_size}.get(
            name, config.hidden_size),)
    if v.shape != expected:
      raise ValueError(f"scores[{name!r}]: shape {v.shape}, expected {expected}")
    if per_layer:
      given[name] = v[list(kept_layers)]
  if set(given) != set(GROUPS):
    sub_config = config.replace(num_hidden_layers=len(kept_layers))
    given = {**magnitude_scores(_take_layers(params, kept_layers), sub_config), **given}
  return ShrinkPlan(
      layers=kept_layers,
      heads=tuple(_top(s, n_heads) for s in given["heads"]),
      intermediate=tuple(_top(s, n_ffn) for s in given["intermediate"]),
      hidden=_top(given["hidden"], n_hidden),
      pooler=_top(given["pooler"], n_hidden))


def apply_plan(params: Any, config: bert.BertConfig, plan: ShrinkPlan
               ) -> tuple[Any, bert.BertConfig]:
  """Cuts the units ``plan`` drops out of ``params``; returns ``(params, config)``.

  Example: ``apply_plan(params, config, plan_shrink(params, config, layers=1))``.
  """
  new_config = config.replace(num_hidden_layers=len(plan.layers),
                              num_attention_heads=len(plan.heads[0]),
                              hidden_size=len(plan.hidden),
                              intermediate_size=len(plan.intermediate[0]))
  d = config.head_dim
  specs = _specs(config.replace(num_hidden_layers=len(plan.layers)))

  def cut(path, leaf):
    path = masks_lib.path_str(path)
    m = _LAYER.search(path)
    layer = int(m[2]) if m else None
    index = {"hidden": plan.hidden, "pooler": plan.pooler,
             "intermediate": plan.intermediate[layer] if m else None,
             "heads": [h * d + j for h in plan.heads[layer] for j in range(d)] if m else None}
    if path not in specs:
      raise ValueError(f"{path}: not a parameter of {config.num_hidden_layers}-layer BERT")
    out = np.asarray(jax.device_get(leaf))
    for axis, group in enumerate(_groups(path, specs[path])):
      if group is not None:
        out = np.take(out, np.asarray(index[group], np.int64), axis=axis)
    return jnp.asarray(out)

  new_params = jax.tree_util.tree_map_with_path(cut, _take_layers(params, plan.layers))
  return new_params, new_config


def shrink(params: Any, config: bert.BertConfig, *,
           layers: int | Sequence[int] | None = None, heads: int | None = None,
           intermediate: int | None = None, hidden: int | None = None,
           scores: dict[str, np.ndarray] | None = None) -> tuple[Any, bert.BertConfig]:
  """A smaller dense BERT cut out of ``params``: fewer layers, heads, FFN neurons, width.

  Args:
    params: a ``BertForSequenceClassification``'s params.
    config: its config.
    layers: None (all), a count (uniform spacing ending at the last layer, see
      ``uniform_layers``) or the ascending indices to keep.
    heads: attention heads kept per layer (None: all); ``hidden`` follows as
      ``heads * head_dim``.
    intermediate: FFN neurons kept per layer (None: all).
    hidden: residual dimensions kept (None: all, or ``heads * head_dim``); must equal
      ``heads * head_dim`` when both are given.
    scores: optional unit scores (``taylor_scores``; groups ``hidden``, ``heads``,
      ``intermediate``, ``pooler``; per-layer groups indexed by the original layers);
      groups not given are ranked by ``magnitude_scores``.

  Returns:
    ``(new_params, new_config)``: same tree structure, an ordinary ``BertConfig``.

  Raises:
    ValueError: counts out of range, or ``heads`` and ``hidden`` that Hugging Face's
      BERT cannot represent with whole heads.

  Example::

    small, small_config = shrink(params, config, layers=3, heads=6, intermediate=768)
  """
  plan = plan_shrink(params, config, layers=layers, heads=heads, intermediate=intermediate,
                     hidden=hidden, scores=scores)
  return apply_plan(params, config, plan)
