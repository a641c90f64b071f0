"""Magnitude masks: which weights may be pruned, and which of them to keep.

A *mask tree* has the structure of the params tree and one ``bool`` leaf per param leaf,
shaped like it: ``True`` keeps the weight, ``False`` prunes it. Leaves that are not
prunable get an all-``True`` mask, so a mask tree never holds ``None`` and
``jax.tree.map(f, params, masks)`` always works.

Which leaves are prunable is *static*: it is decided from the leaf's path (``/``-joined
keys, e.g. ``bert/encoder/layer/0/attention/self/query/kernel``), shape and dtype, never
from values. ``where`` arguments accept:

* ``None``: every floating-point leaf with at least 2 dimensions (the kernels);
* a regex or a sequence of regexes, searched (``re.search``) in the path, see `select`;
* a callable ``params -> bool tree``;
* a tree of Python bools shaped like the params tree (e.g. from `select`).

Keep counts are computed on the host in float64 (`keep_count`) and ranking happens on
the exact bit patterns of ``|w|``, so masks are exact: no float32 rounding decides how
many weights survive. No sort is needed either: a radix select on the float bits (two
16-bit histogram passes) finds the k-th largest magnitude of every matrix, batched over
the matrices of one shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
import re
from typing import Any, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Where = Union[None, str, re.Pattern, Sequence[Union[str, re.Pattern]],
              Callable[[PyTree], PyTree], PyTree]

# The 6 matrices of each BERT encoder layer (query, key, value, attention output, FFN
# intermediate, FFN output) in Hugging Face / Flax naming. Not matched: embeddings,
# biases, LayerNorms, the pooler and the classifier, as in SparseBERT.
BERT_ENCODER_MATRICES: tuple[str, ...] = (
    r"(^|/)encoder/layers?[/_]\d+/attention/self/(query|key|value)/kernel$",
    r"(^|/)encoder/layers?[/_]\d+/attention/output/dense/kernel$",
    r"(^|/)encoder/layers?[/_]\d+/intermediate/dense/kernel$",
    r"(^|/)encoder/layers?[/_]\d+/output/dense/kernel$",
)

# Mask ranking scopes, tie rules and keep-count roundings (the allowed option values).
SCOPES = ("per_matrix", "global")
TIES = ("exact", "keep")
ROUNDINGS = ("exact", "reference")


class NM(NamedTuple):
  """N:M structured sparsity: at most ``n`` of every ``m`` consecutive weights kept.

  Groups run along ``axis`` (default 0). Flax kernels are ``(in, out)``, so ``axis=0``
  groups ``m`` consecutive input rows of each output column: after transposing to
  PyTorch's ``(out, in)`` layout these are the row-wise groups that sparse tensor cores
  (2:4) expect. Within a group the largest magnitudes win, ties go to the lower index,
  and each group keeps exactly ``keep_count(m, sparsity)`` weights, which must not be
  fewer than ``n`` (``sparsity <= 1 - n / m``); a schedule may ramp 4:4 -> 3:4 -> 2:4.

  Example:
    >>> masks = magnitude_masks(params, None, pattern=NM(2, 4))  # doctest: +SKIP
  """
  n: int
  m: int
  axis: int = 0


class Blocks(NamedTuple):
  """Block sparsity: whole ``rows x cols`` tiles of a 2-D leaf are kept or pruned.

  Blocks tile the leaf as stored (Flax kernels are ``(in, out)``): PyTorch's ``(out,
  in)`` "1x4" blocks (4 consecutive inputs of one output) are ``Blocks(4, 1)`` here.
  A block's score is the L1 norm of its surviving weights; ``sparsity`` is the fraction
  of blocks pruned.

  Example:
    >>> masks = magnitude_masks(params, 0.75, pattern=Blocks(4, 4))  # doctest: +SKIP
  """
  rows: int
  cols: int


Pattern = Union[None, NM, Blocks]


class LeafSparsity(NamedTuple):
  """Size, nonzero count and sparsity (fraction of zeros) of one leaf."""
  size: int
  nonzero: int
  sparsity: float


class SparsityReport(NamedTuple):
  """Per-leaf and total sparsity of a params or mask tree (see `sparsity_report`)."""
  leaves: dict[str, LeafSparsity]
  size: int
  nonzero: int
  sparsity: float

  def format(self) -> str:
    """A human-readable table, one line per leaf plus a total line."""
    width = max([len(k) for k in self.leaves] + [5])
    lines = [f"{k:<{width}}  {v.nonzero:>12,}/{v.size:<12,}  {v.sparsity:7.2%}"
             for k, v in self.leaves.items()]
    lines.append(f"{'total':<{width}}  {self.nonzero:>12,}/{self.size:<12,}  "
                 f"{self.sparsity:7.2%}")
    return "\n".join(lines)


def path_str(path: Sequence[Any]) -> str:
  """Joins a JAX key path into ``a/b/0/c`` form.

  Example:
    >>> path_str(jax.tree_util.tree_flatten_with_path({"a": [1]})[0][0][0])
    'a/0'
  """
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def _compile(patterns) -> list[re.Pattern]:
  if isinstance(patterns, (str, re.Pattern)):
    patterns = [patterns]
  return [re.compile(p) for p in patterns]


def select(params: PyTree, patterns: Union[str, re.Pattern, Sequence[Union[str, re.Pattern]]]
          ) -> PyTree:
  """Marks the leaves whose ``/``-joined path matches any of ``patterns``.

  Matching uses ``re.search``, so anchor with ``^``/``$`` where needed. The result is a
  static tree of Python bools (usable as ``where`` anywhere in jaxprune).

  Args:
    params: a params tree (arrays, or ``jax.ShapeDtypeStruct`` leaves).
    patterns: one regex or a sequence of regexes.

  Returns:
    A tree of Python bools with the structure of ``params``.

  Example:
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    >>> select(params, r"kernel$")
    {'dense': {'bias': False, 'kernel': True}}
  """
  compiled = _compile(patterns)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(r.search(path_str(path)) for r in compiled), params)


def _default_prunable(leaf) -> bool:
  return len(np.shape(leaf)) >= 2 and jnp.issubdtype(leaf.dtype, jnp.floating)


def _is_pattern_list(where) -> bool:
  if isinstance(where, (str, re.Pattern)):
    return True
  return (isinstance(where, (list, tuple)) and len(where) > 0 and
          all(isinstance(w, (str, re.Pattern)) for w in where))


def prunable_tree(params: PyTree, where: Where = None) -> PyTree:
  """Resolves a ``where`` argument into a static tree of Python bools.

  Args:
    params: a params tree (arrays, tracers or ``jax.ShapeDtypeStruct`` leaves).
    where: ``None`` (floating leaves with ``ndim >= 2``), regex(es) (see `select`), a
      callable ``params -> bool tree``, or a bool tree.

  Returns:
    A tree of Python bools with the structure of ``params``.

  Example:
    >>> prunable_tree({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
    {'b': False, 'w': True}
  """
  if where is None:
    tree = jax.tree.map(_default_prunable, params)
  elif _is_pattern_list(where):
    tree = select(params, where)
  elif callable(where):
    tree = where(params)
  else:
    tree = where
  treedef = jax.tree.structure(params)
  try:
    flags = treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"`where` does not match the params tree structure: {e}") from e
  for flag in flags:
    if not isinstance(flag, (bool, np.bool_)):
      raise TypeError("`where` must resolve to static Python bools (one per param leaf), "
                      f"got a {type(flag).__name__}; masks select leaves by path, not value.")
  return treedef.unflatten([bool(f) for f in flags])


def keep_count(units: int, sparsity: float, rounding: str = "exact") -> int:
  """How many of ``units`` weights (or blocks) survive at ``sparsity``, on the host.

  ``rounding="reference"`` is SparseBERT's ``floor(units * (1 - sparsity))`` in float64,
  bit for bit (so ``keep_count(10, 0.9, "reference") == 0``: ``1 - 0.9`` is a hair
  below 0.1). ``"exact"`` (default) adds a 1e-6 tolerance before the floor so that
  decimal sparsities give the count one expects (``keep_count(10, 0.9) == 1``). Both
  keep at most ``floor(units * (1 - sparsity))`` up to float noise, i.e. the sparsity
  reached is never below the target.

  Args:
    units: number of weights (or blocks) competing.
    sparsity: fraction to prune, in [0, 1].
    rounding: ``"exact"`` or ``"reference"``.

  Returns:
    An int in ``[0, units]``.

  Example:
    >>> keep_count(589824, 0.95)
    29491
  """
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
  sparsity = float(sparsity)
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
  if rounding == "reference":
    k = math.floor(units * (1 - sparsity))
  else:
    k = math.floor(units * (1.0 - sparsity) + 1e-6)
  return min(max(k, 0), units)


# --------------------------------------------------------------------------- planning


def check_options(scope: str = "per_matrix", ties: str = "exact",
                  pattern: Pattern = None) -> None:
  """Raises ValueError/TypeError for an unknown scope, ties mode or pattern."""
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
  if pattern is not None and not isinstance(pattern, (NM, Blocks)):
    raise TypeError(f"pattern must be None, NM or Blocks, got {pattern!r}")


def _units(path: str, shape: tuple[int, ...], pattern: Pattern) -> int:
  """Number of competing units of one prunable leaf (validates the pattern)."""
  if isinstance(pattern, Blocks):
    if len(shape) != 2 or shape[0] % pattern.rows or shape[1] % pattern.cols:
      raise ValueError(f"{path}: shape {shape} cannot be tiled by {pattern.rows}x"
                       f"{pattern.cols} blocks (needs a 2-D leaf with divisible dims)")
    return (shape[0] // pattern.rows) * (shape[1] // pattern.cols)
  if isinstance(pattern, NM):
    if not 0 < pattern.n <= pattern.m:
      raise ValueError(f"N:M needs 0 < n <= m, got {pattern.n}:{pattern.m}")
    if not shape or shape[pattern.axis] % pattern.m:
      raise ValueError(f"{path}: axis {pattern.axis} of shape {shape} is not a multiple "
                       f"of m={pattern.m}")
    return pattern.m
  if pattern is not None:
    raise TypeError(f"pattern must be None, NM or Blocks, got {pattern!r}")
  return int(np.prod(shape, dtype=np.int64))


def group_units(paths: Sequence[str], shapes: Sequence[tuple[int, ...]], pattern: Pattern,
                scope: str) -> list[int]:
  """Units per ranking group: one group per leaf (``per_matrix``) or one (``global``).

  N:M always has a single group size, ``m`` (every group of ``m`` keeps the same count).
  """
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
  units = [_units(p, tuple(s), pattern) for p, s in zip(paths, shapes)]
  if isinstance(pattern, NM):
    return [pattern.m]
  if scope == "global":
    total = sum(units)
    if total >= 2**31:
      raise ValueError(f"global scope over {total} units overflows int32 counts")
    return [total]
  return units


def group_keep_counts(units: Sequence[int], sparsity: float, pattern: Pattern,
                      rounding: str) -> list[int]:
  """Host keep counts per group at ``sparsity`` (validates N:M's floor of ``n``)."""
  ks = [keep_count(u, sparsity, rounding) for u in units]
  if isinstance(pattern, NM) and ks and ks[0] < pattern.n:
    raise ValueError(f"sparsity {sparsity} keeps {ks[0]} of {pattern.m}, fewer than the "
                     f"{pattern.n}:{pattern.m} pattern allows (max sparsity "
                     f"{1 - pattern.n / pattern.m})")
  return ks


# ---------------------------------------------------------------------- in-graph core


def _key_types(dtypes) -> tuple[Any, Any]:
  if any(jnp.dtype(d) == jnp.float64 for d in dtypes):
    return jnp.float64, jnp.int64
  return jnp.float32, jnp.int32


def _unit_scores(w: jax.Array, alive: jax.Array, pattern: Pattern, fdtype):
  """Magnitude per unit (weight or block) and whether the unit has survivors."""
  mag = jnp.abs(w).astype(fdtype)
  if isinstance(pattern, Blocks):
    (rows, cols), (r, c) = w.shape, pattern
    tiles = (rows // r, r, cols // c, c)
    mag = jnp.where(alive, mag, 0).reshape(tiles).sum(axis=(1, 3))
    alive = alive.reshape(tiles).any(axis=(1, 3))
  return mag, alive


def _keys(mag: jax.Array, alive: jax.Array, idtype) -> jax.Array:
  """Order-preserving integer keys: bits of ``|w|`` (>= 0) for survivors, -1 if pruned."""
  bits = lax.bitcast_convert_type(mag, idtype)
  return jnp.where(alive, bits, jnp.array(-1, idtype))


def _digits(nbits: int, width: int = 16) -> list[tuple[int, int]]:
  """(shift, bits) of the radix digits of an ``nbits`` key, most significant first."""
  out, hi = [], nbits
  while hi > 0:
    bits = min(width, hi)
    out.append((hi - bits, bits))
    hi -= bits
  return out


def _pick(counts: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row b: the largest bin j with ``sum(counts[b, j:]) >= r[b]`` (0 if none), and
  ``sum(counts[b, j+1:])``. A masked triangular sum over <= 256 bins, not a cumsum."""
  idx = jnp.arange(counts.shape[1])
  upper = idx[None, None, :] >= idx[None, :, None]
  at_least = jnp.sum(jnp.where(upper, counts[:, None, :], 0), axis=2, dtype=jnp.int32)
  j = jnp.maximum(jnp.sum(at_least >= r[:, None], axis=1, dtype=jnp.int32) - 1, 0)
  take = lambda x: jnp.take_along_axis(x, j[:, None], axis=1)[:, 0]
  return j, take(at_least) - take(counts)


def _kth_largest(stacks: Sequence[jax.Array], k: jax.Array,
                 shared: bool) -> tuple[jax.Array, jax.Array]:
  """The k-th largest key by radix selection, per row of one stack or over all stacks.

  Keys of non-negative floats order like the floats, so a most-significant-digit radix
  select (two 16/15-bit histogram passes for float32; no sort) finds it exactly.

  Args:
    stacks: int key arrays of shape ``(leaves, units)``; pruned units are -1.
    k: keep counts, ``(leaves,)`` for one stack, or a scalar if ``shared``.
    shared: one threshold over every key of every stack (the global scope).

  Returns:
    ``(T, r)`` per row (or scalars if shared): the threshold, and how many keys equal
    to T belong to the top k, i.e. ``k - count(keys > T)``. If fewer than k survive, T
    is 0 and r exceeds the number of keys equal to 0 (every survivor is kept).
  """
  idtype = stacks[0].dtype
  rows = 1 if shared else stacks[0].shape[0]
  prefix = jnp.zeros(rows, idtype)
  r = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (rows,))
  top = jnp.iinfo(idtype).bits - 1
  for shift, bits in _digits(top):
    size = 1 << bits
    hist = jnp.zeros(rows * size, jnp.int32)
    for st in stacks:
      digit = ((st >> shift) & (size - 1)).astype(jnp.int32)
      if shift + bits == top:
        live = st >= 0
      else:
        live = (st >> (shift + bits)) == (prefix[0] if shared else prefix[:, None])
      if not shared:
        digit = digit + (jnp.arange(rows, dtype=jnp.int32) * size)[:, None]
      hist = hist.at[digit.ravel()].add(live.ravel().astype(jnp.int32),
                                        mode="promise_in_bounds")
    hist = hist.reshape(rows, size)
    # Two levels of up to 256 bins: the block holding the r-th largest, then the bin.
    lo = 1 << (bits // 2)
    block, above = _pick(hist.reshape(rows, size // lo, lo).sum(axis=2), r)
    sub = jnp.take_along_axis(hist, block[:, None] * lo + jnp.arange(lo)[None, :], axis=1)
    j, above_in_block = _pick(sub, r - above)
    r = r - above - above_in_block
    prefix = (prefix << bits) | (block * lo + j).astype(idtype)
  if shared:
    return prefix[0], r[0]
  return prefix, r


def _tie_cuts(stack: jax.Array, cols: int, thr: jax.Array, left: jax.Array) -> jax.Array:
  """Per leaf of a ``(leaves, units)`` stack: the flat position ``cut`` such that the
  keys equal to T before ``cut`` are exactly the first ``left`` of them (clipped).

  Rows (``cols`` wide) are contiguous in flat order: whole rows of ties while they fit,
  then a short cumsum inside the first row where the budget runs out.
  """
  n = stack.shape[0]
  eq = stack.reshape(n, -1, cols) == thr[:, None, None]
  per_row = jnp.sum(eq, axis=2, dtype=jnp.int32)
  before = jnp.cumsum(per_row, axis=1) - per_row
  n_rows = eq.shape[1]
  full = jnp.sum(before + per_row <= left[:, None], axis=1, dtype=jnp.int32)  # a prefix
  row = jnp.minimum(full, n_rows - 1)
  budget = left - jnp.take_along_axis(before, row[:, None], axis=1)[:, 0]
  row_eq = jnp.take_along_axis(eq, row[:, None, None], axis=1)[:, 0, :]
  in_row = jnp.sum(jnp.cumsum(row_eq, axis=1, dtype=jnp.int32) < budget[:, None], axis=1,
                   dtype=jnp.int32) + 1
  cut = row * cols + jnp.where(budget > 0, in_row, 0)
  return jnp.where(full >= n_rows, n_rows * cols, cut)


def _by_shape(shapes: Sequence[Any]) -> list[list[int]]:
  """Indices of equal shapes, grouped (first-seen order): one computation per shape."""
  groups: dict[Any, list[int]] = {}
  for i, s in enumerate(shapes):
    groups.setdefault(s, []).append(i)
  return list(groups.values())


def _cols(shape: tuple[int, ...]) -> int:
  return shape[-1] if len(shape) >= 2 else max(int(np.prod(shape, dtype=np.int64)), 1)


def unit_thresholds(keys: Sequence[jax.Array], ks: jax.Array, scope: str = "per_matrix",
                    ties: str = "exact") -> tuple[list[jax.Array], list[jax.Array]]:
  """Per leaf ``(T, cut)``: keep the keys > T and the keys == T at flat index < cut.

  ``keys`` are order-preserving integer keys (-1 for pruned units); each leaf keeps its
  top ``ks[i]`` (``per_matrix``) or all share a top ``ks[0]`` (``global``). Ties at T
  go to lower indices (``ties="exact"``: exactly k kept) or are all kept (``"keep"``,
  the reference). A keep count of 0 keeps nothing. Leaves of one shape are stacked
  and handled by one batched computation, so the compiled size grows with the number
  of distinct shapes (3 for BERT), not of leaves.
  """
  check_options(scope, ties)
  ks = jnp.asarray(ks, jnp.int32)
  groups = _by_shape([kk.shape for kk in keys])
  stacks = [jnp.stack([keys[i].reshape(-1) for i in idx]) for idx in groups]
  never = jnp.array(jnp.iinfo(keys[0].dtype).max, keys[0].dtype)
  thr_out: list[Any] = [None] * len(keys)
  cut_out: list[Any] = [None] * len(keys)

  def emit(idx, st, thr, left, k):
    n = len(idx)
    thr = jnp.broadcast_to(thr, (n,))
    if ties == "keep":
      cut = jnp.full((n,), st.shape[1], jnp.int32)
    else:
      cut = _tie_cuts(st, _cols(keys[idx[0]].shape), thr, left)
    thr, cut = jnp.where(k > 0, thr, never), jnp.where(k > 0, cut, 0)
    for row, i in enumerate(idx):
      thr_out[i], cut_out[i] = thr[row], cut[row]

  if scope == "global":
    thr, r = _kth_largest(stacks, ks[0], shared=True)
    # The tie budget flows through the leaves in tree order.
    counts = jnp.zeros(len(keys), jnp.int32)
    for idx, st in zip(groups, stacks):
      counts = counts.at[jnp.asarray(idx)].set(jnp.sum(st == thr, axis=1, dtype=jnp.int32))
    left = r - (jnp.cumsum(counts) - counts)
    for idx, st in zip(groups, stacks):
      emit(idx, st, thr, left[jnp.asarray(idx)], jnp.broadcast_to(ks[0], (len(idx),)))
  else:
    for idx, st in zip(groups, stacks):
      k = ks[jnp.asarray(idx)]
      thr, r = _kth_largest([st], k, shared=False)
      emit(idx, st, thr, r, k)
  return thr_out, cut_out


def select_units(keys: jax.Array, thr: jax.Array, cut: jax.Array) -> jax.Array:
  """Elementwise: ``keys > T``, or ``keys == T`` at a flat index below ``cut``."""
  flat = jnp.zeros(keys.shape, jnp.int32)
  stride = 1
  for axis in range(keys.ndim - 1, -1, -1):
    flat = flat + lax.broadcasted_iota(jnp.int32, keys.shape, axis) * stride
    stride *= keys.shape[axis]
  return (keys > thr) | ((keys == thr) & (flat < cut))


def unstructured_keys(new: Sequence[jax.Array], alive: Sequence[jax.Array]
                      ) -> list[jax.Array]:
  """Order-preserving integer keys of ``|w|`` (-1 where pruned), elementwise."""
  fdtype, idtype = _key_types([w.dtype for w in new])
  return [_keys(jnp.abs(w).astype(fdtype), a, idtype) for w, a in zip(new, alive)]


def _nm_mask(w: jax.Array, alive: jax.Array, pattern: NM, k: jax.Array) -> jax.Array:
  """Keeps the ``k`` largest survivors of each group of ``m`` along ``pattern.axis``."""
  m, axis = pattern.m, pattern.axis
  mag = jnp.where(alive, jnp.abs(w).astype(jnp.float32), -1.0)
  mag = jnp.moveaxis(mag, axis, 0)
  shape = mag.shape
  g = mag.reshape((shape[0] // m, m) + shape[1:])
  gi, gj = g[:, :, None], g[:, None, :]  # (groups, i, j, ...)
  idx = np.arange(m)
  before = (idx[None, :] < idx[:, None]).reshape((1, m, m) + (1,) * (len(shape) - 1))
  rank = jnp.sum((gj > gi) | ((gj == gi) & before), axis=2, dtype=jnp.int32)
  keep = jnp.moveaxis((rank < k).reshape(shape), 0, axis)
  return keep & alive


def compute_masks(new: Sequence[jax.Array], alive: Sequence[jax.Array], ks: jax.Array, *,
                  pattern: Pattern = None, scope: str = "per_matrix",
                  ties: str = "exact") -> list[jax.Array]:
  """Masks of the prunable leaves ``new`` given survivors ``alive`` and keep counts.

  Low-level, jittable: ``ks`` (int32, one per group of `group_units`) may be traced.
  The result is always a subset of ``alive`` (masks only shrink).
  """
  if not new:
    return []
  ks = jnp.asarray(ks, jnp.int32)
  if isinstance(pattern, NM):
    nm = jax.vmap(lambda w, a: _nm_mask(w, a, pattern, ks[0]))
    out: list[Any] = [None] * len(new)
    for idx in _by_shape([(w.shape, w.dtype) for w in new]):
      masks = nm(jnp.stack([new[i] for i in idx]), jnp.stack([alive[i] for i in idx]))
      for row, i in enumerate(idx):
        out[i] = masks[row]
    return out
  fdtype, idtype = _key_types([w.dtype for w in new])
  scored = [_unit_scores(w, a, pattern, fdtype) for w, a in zip(new, alive)]
  keys = [_keys(mag, a, idtype) for mag, a in scored]
  thrs, cuts = unit_thresholds(keys, ks, scope, ties)
  masks = []
  for kk, thr, cut, w, a in zip(keys, thrs, cuts, new, alive):
    u = select_units(kk, thr, cut)
    if isinstance(pattern, Blocks):
      r, c = pattern
      u = jnp.broadcast_to(u[:, None, :, None], (u.shape[0], r, u.shape[1], c))
      u = u.reshape(w.shape)
    masks.append(u & a)
  return masks


# One compiled computation per (shapes, pattern, scope, ties): eager calls stay fast and
# the keep counts, an argument, do not trigger recompilation.
_compute_masks_jit = jax.jit(compute_masks, static_argnames=("pattern", "scope", "ties"))


# ------------------------------------------------------------------------- public API


def _host_float(x, name: str) -> float:
  try:
    return float(x)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise TypeError(f"{name} must be a concrete number: keep counts are computed exactly "
                    "on the host (pass it as a static argument under jit)") from e


def magnitude_masks(params: PyTree, sparsity: Optional[float], where: Where = None,
                    old_masks: Optional[PyTree] = None, *, scope: str = "per_matrix",
                    ties: str = "exact", pattern: Pattern = None,
                    rounding: str = "exact") -> PyTree:
  """Magnitude-pruning masks keeping the largest ``|w|`` of the prunable leaves.

  Ranking is on ``|w|`` of the weights still alive in ``old_masks`` (a pruned weight
  never comes back, as in SparseBERT's ``|w * mask|``). Each prunable leaf keeps
  ``keep_count(numel, sparsity)`` weights (``scope="per_matrix"``, the reference) or
  the leaves share one ranking (``scope="global"``).

  Args:
    params: the params tree (jittable if ``sparsity`` is static).
    sparsity: fraction to prune, a Python float; ``None`` only with ``NM`` (1 - n/m).
    where: which leaves are prunable (see module docstring); others get all-True masks.
    old_masks: previous masks; ``None`` means every weight is alive.
    scope: ``"per_matrix"`` or ``"global"``.
    ties: ``"exact"`` keeps exactly k, ties at the threshold broken by flat index (lower
      index wins); ``"keep"`` keeps every ``|w| >= k``-th largest, like the reference.
    pattern: ``None`` (unstructured), ``NM(n, m)`` or ``Blocks(rows, cols)``.
    rounding: ``"exact"`` or ``"reference"`` (see `keep_count`).

  Returns:
    A bool tree shaped like ``params``.

  Example:
    >>> params = {"w": jnp.array([[0.1, -0.5], [0.3, 0.2]]), "b": jnp.ones(2)}
    >>> masks = magnitude_masks(params, 0.5)
    >>> masks["w"].tolist(), masks["b"].tolist()
    ([[False, True], [True, False]], [True, True])
  """
  check_options(scope, ties, pattern)
  if sparsity is None:
    if not isinstance(pattern, NM):
      raise ValueError("sparsity=None is only meaningful with an NM pattern")
    sparsity = 1.0 - pattern.n / pattern.m
  sparsity = _host_float(sparsity, "sparsity")
  flags = jax.tree.leaves(prunable_tree(params, where))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_str(p) for p, _ in flat]
  leaves = [leaf for _, leaf in flat]
  olds = (treedef.flatten_up_to(old_masks) if old_masks is not None
          else [jnp.ones(np.shape(x), bool) for x in leaves])
  idx = [i for i, f in enumerate(flags) if f]
  units = group_units([paths[i] for i in idx], [np.shape(leaves[i]) for i in idx],
                      pattern, scope)
  ks = jnp.asarray(group_keep_counts(units, sparsity, pattern, rounding), jnp.int32)
  new = _compute_masks_jit([jnp.asarray(leaves[i]) for i in idx],
                      [jnp.asarray(olds[i], bool) for i in idx], ks,
                      pattern=pattern, scope=scope, ties=ties)
  out = [jnp.ones(np.shape(x), bool) for x in leaves]
  for i, m in zip(idx, new):
    out[i] = m
  return treedef.unflatten(out)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """Zeroes the pruned weights: ``where(mask, p, 0)`` leaf by leaf, dtypes kept.

  Example:
    >>> apply_masks({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})
    {'w': Array([1., 0.], dtype=float32)}
  """
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)), params, masks)


def sparsity_report(tree: PyTree, where: Where = None) -> SparsityReport:
  """Per-leaf and total sparsity of a params tree (zeros) or mask tree (``False``).

  Args:
    tree: params or masks (concrete arrays; the report is computed on the host).
    where: restricts the report to these leaves (same forms as elsewhere); ``None``
      reports every leaf.

  Returns:
    A `SparsityReport`: ``leaves`` maps paths to `LeafSparsity`; ``size``, ``nonzero``
    and ``sparsity`` are totals over the reported leaves.

  Example:
    >>> r = sparsity_report({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]])})
    >>> r.leaves["w"], r.sparsity
    (LeafSparsity(size=4, nonzero=1, sparsity=0.75), 0.75)
  """
  flags = (jax.tree.leaves(prunable_tree(tree, where)) if where is not None
           else [True] * len(jax.tree.leaves(tree)))
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  leaves = {}
  for (path, leaf), flag in zip(flat, flags):
    if not flag:
      continue
    arr = np.asarray(leaf)
    size, nonzero = int(arr.size), int(np.count_nonzero(arr))
    leaves[path_str(path)] = LeafSparsity(size, nonzero, 1.0 - nonzero / size if size else 0.0)
  size = sum(v.size for v in leaves.values())
  nonzero = sum(v.nonzero for v in leaves.values())
  return SparsityReport(leaves, size, nonzero, 1.0 - nonzero / size if size else 0.0)
