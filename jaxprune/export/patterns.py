"""N:M sparsity checks: the one host-side 2:4 check of jaxprune, and pattern names.

This module decides whether a matrix in PyTorch ``(out, in)`` layout keeps at most ``n``
of every ``m`` consecutive inputs (`check_nm`), whether its shape fits torch's 2:4
kernels (`semi_structured_shape_ok`, both at once: `check_semi_structured`), and which
pattern a sparse artifact records for a keep-mask (`pattern_name`). The 2:4 export
(`jaxprune.export.hf`) and the 2:4 runner (`jaxprune.infer.torch_semi_structured`) both
check through it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxprune import masks as masks_lib
from jaxprune.errors import PatternError
from jaxprune.export import codec

# The strictest shape rule of torch's semi-structured backends for 16-bit floats
# (CUTLASS: rows % 32, cols % 64; cuSPARSELt: 16, 16), so either backend accepts it.
SEMI_MIN_ROWS, SEMI_MIN_COLS = 32, 64


def _nm_violation(nonzero: np.ndarray, n: int, m: int) -> tuple[int, int, int] | None:
  """First (row, col0, count) group of ``m`` along rows with more than ``n`` kept."""
  rows, cols = nonzero.shape
  if cols % m:
    return (-1, cols, -1)
  counts = nonzero.reshape(rows, cols // m, m).sum(-1)
  bad = np.argwhere(counts > n)
  if not bad.size:
    return None
  r, g = bad[0]
  return int(r), int(g) * m, int(counts[r, g])


def check_nm(weight: Any, name: str, n: int = 2, m: int = 4) -> None:
  """Raises `PatternError` unless every ``m`` consecutive inputs keep at most ``n``.

  ``weight`` is in PyTorch ``(out, in)`` layout (a torch tensor or an array); nonzeros
  count as kept. This is the host-side check run before ``to_sparse_semi_structured``,
  which would otherwise silently drop the extra values (or fail on the device).

  Example:
    >>> check_nm(np.array([[1., 0., 2., 0.]]), "w")   # fine
    >>> check_nm(np.array([[1., 3., 2., 0.]]), "w")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    jaxprune.errors.PatternError: w: inputs 0-3 of output row 0 hold 3 nonzeros;
      2:4 allows at most 2
  """
  if hasattr(weight, "detach"):  # a torch tensor
    weight = weight.detach().cpu()
    nonzero = (weight != 0).numpy()
  else:
    nonzero = codec.to_numpy(weight) != 0
  if nonzero.ndim != 2:
    raise PatternError(f"{name}: shape {list(nonzero.shape)}; expected a 2-D (out, in) "
                       f"matrix for {n}:{m}")
  bad = _nm_violation(nonzero, n, m)
  if bad is None:
    return
  row, col, count = bad
  if row < 0:
    raise PatternError(f"{name}: {col} inputs is not a multiple of {m}; {n}:{m} needs "
                       f"whole groups of {m}")
  raise PatternError(f"{name}: inputs {col}-{col + m - 1} of output row {row} hold "
                     f"{count} nonzeros; {n}:{m} allows at most {n}")


def semi_structured_shape_ok(shape: Sequence[int]) -> bool:
  """Whether an ``(out, in)`` fp16/bf16 matrix fits every torch 2:4 backend's shape rule.

  Example:
    >>> semi_structured_shape_ok((768, 3072)), semi_structured_shape_ok((32, 32))
    (True, False)
  """
  rows, cols = shape
  return rows % SEMI_MIN_ROWS == 0 and cols % SEMI_MIN_COLS == 0 and rows > 0 and cols > 0


def check_semi_structured(weight: Any, name: str) -> None:
  """Raises `PatternError` unless ``weight`` is 2:4 (`check_nm`) with a 2:4 kernel shape.

  ``weight`` is an ``(out, in)`` torch tensor or array; this is what must hold before
  ``torch.sparse.to_sparse_semi_structured(weight)``.

  Example:
    >>> check_semi_structured(np.tile([1., 0., 2., 0.], (32, 16)), "w")   # fine
    >>> check_semi_structured(np.tile([1., 0., 2., 0.], (32, 8)), "w")
    ... # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    jaxprune.errors.PatternError: w: shape [32, 32]; torch 2:4 kernels need
      rows % 32 == 0 and cols % 64 == 0
  """
  check_nm(weight, name)
  if not semi_structured_shape_ok(tuple(weight.shape)):
    raise PatternError(f"{name}: shape {list(weight.shape)}; torch 2:4 kernels need "
                       f"rows % {SEMI_MIN_ROWS} == 0 and cols % {SEMI_MIN_COLS} == 0")


def pattern_name(keep_out_in: np.ndarray, pattern: masks_lib.Pattern, path: str) -> str:
  """The pattern recorded in the header; validates a pattern the caller claims."""
  if isinstance(pattern, masks_lib.NM):
    if pattern.axis != 0:
      raise PatternError(f"{path}: NM axis {pattern.axis}; the artifact records N:M along "
                         "the input dimension (axis 0 of a Flax kernel)")
    check_nm(keep_out_in, path, pattern.n, pattern.m)
    return f"{pattern.n}:{pattern.m}"
  if isinstance(pattern, masks_lib.Blocks):
    keep = keep_out_in.T  # Blocks tile the leaf as stored (Flax (in, out)).
    r, c = pattern
    if keep.shape[0] % r or keep.shape[1] % c:
      raise PatternError(f"{path}: shape {list(keep.shape)} is not tiled by {r}x{c} blocks")
    tiles = keep.reshape(keep.shape[0] // r, r, keep.shape[1] // c, c)
    if not np.all(tiles.all(axis=(1, 3)) | ~tiles.any(axis=(1, 3))):
      raise PatternError(f"{path}: mask is not made of whole {r}x{c} blocks")
    return f"block:{r}x{c}"
  if pattern is not None:
    raise TypeError(f"pattern {pattern!r}; expected None, masks.NM or masks.Blocks")
  if keep_out_in.shape[1] % 4 == 0 and _nm_violation(keep_out_in, 2, 4) is None:
    return "2:4"
  return "unstructured"
