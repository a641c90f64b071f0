"""Pruned-model artifacts: dense HF, compressed sparse, and 2:4 for sparse tensor cores.

Three formats, one entry point (`export_model`, which the CLI calls):

* ``"hf"``: a Hugging Face ``BertForSequenceClassification`` directory with the pruned
  weights as exact zeros (`export_hf`, the foundation's `jaxprune.models.export_hf`
  after `jaxprune.masks.apply_masks`). Any PyTorch user can load it.
* ``"sparse"``: one safetensors file, ``model.sparse.safetensors``, holding each pruned
  matrix compressed (see *Storage* below) and every other tensor densely, with a
  versioned JSON header (`export_sparse` / `load_sparse`). Fp32 values load back
  bitwise.
* ``"2:4"``: an ``"hf"`` directory in float16 whose pruned matrices are validated on the
  host to be 2:4 along the input dimension and to have shapes that
  ``torch.sparse.to_sparse_semi_structured`` accepts, plus ``sparsity.json`` naming them.

Storage of a pruned matrix (rows are output features, the PyTorch ``(out, in)``
layout, so that a row is what a CSR matmul and a 2:4 group run along). ``encoding``:

* ``"bitmask"``: the keep-mask packed 8 per byte (little bit order, row-major) and the
  kept values row-major: ``n/8 + nnz * v`` bytes (``v`` bytes per value).
* ``"csr"``: ``int32`` row pointers, ``uint16`` column indices (``int32`` beyond 65536
  columns), values: ``4 (rows + 1) + nnz * (2 + v)`` bytes.
* ``"csr256"``: CSR over 256-column slabs: a ``uint16`` count per (row, slab) and a
  ``uint8`` column offset per value: ``2 rows ceil(cols/256) + nnz * (1 + v)`` bytes.
* ``"auto"`` (default): the smallest of the three, per matrix; in practice bitmask up to
  ~87.5% sparsity (and for 2:4), csr256 above. Decoding is a few vectorised numpy
  operations per matrix; ``bench/export_infer.py`` times it (CRC check included): a
  few times slower than reading dense safetensors, well under a second for BERT-base.

Header (safetensors metadata key ``"jaxprune"``, JSON)::

  {"format": "jaxprune-sparse", "version": 1, "config": {...HF config.json...} | null,
   "tensors": {"<flax path>": {"shape": [in, out], "dtype": "float32",
                               "encoding": "csr256", "transposed": true,
                               "value_dtype": "float16", "nnz": 29491,
                               "sparsity": 0.95, "pattern": "unstructured",
                               "stored_bytes": 88473}, ...},
   "crc32": {"<stored tensor name>": 123456789, ...}}

Dense tensors have ``"encoding": "dense"`` and ``"value_dtype"`` (what is stored).
Stored tensor names are ``<path>`` (dense) and ``<path>:values|bitmask|indptr|
indices|counts|offsets``. bfloat16 is stored as its ``uint16`` bits.

Example::

  masks = jaxprune.magnitude_masks(params, 0.95, jaxprune.BERT_ENCODER_MATRICES)
  report = export_sparse(params, masks, "/tmp/m.sparse.safetensors", "float16",
                         config=config)
  print(report.format())
  params16 = load_sparse("/tmp/m.sparse.safetensors")
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import ml_dtypes
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune.models import bert
from jaxprune.models import convert

__all__ = [
    "ARTIFACT_NAME",
    "ArtifactError",
    "FORMAT",
    "FORMATS",
    "MANIFEST_NAME",
    "MatrixSize",
    "PatternError",
    "SizeReport",
    "VERSION",
    "check_nm",
    "export_hf",
    "export_model",
    "export_sparse",
    "load_sparse",
    "load_sparse_config",
    "load_sparse_state_dict",
    "read_header",
    "semi_structured_shape_ok",
    "size_report",
]

FORMAT = "jaxprune-sparse"
VERSION = 1
ARTIFACT_NAME = "model.sparse.safetensors"
MANIFEST_NAME = "sparsity.json"
FORMATS = ("hf", "sparse", "2:4")

_META_KEY = "jaxprune"
_ENCODINGS = ("auto", "bitmask", "csr", "csr256")
_VALUE_DTYPES = ("float32", "float16", "bfloat16")
_SLAB = 256
# The strictest shape rule of torch's semi-structured backends for 16-bit floats
# (CUTLASS: rows % 32, cols % 64; cuSPARSELt: 16, 16), so either backend accepts it.
_SEMI_MIN_ROWS, _SEMI_MIN_COLS = 32, 64


class ArtifactError(ValueError):
  """An artifact that cannot be read: missing, truncated, corrupted, wrong version."""


class PatternError(ValueError):
  """A matrix that violates the sparsity pattern (e.g. 2:4) a format or path needs."""


# ----------------------------------------------------------------------------- helpers


_flat = convert.flatten
_unflat = convert.unflatten


def _np(x: Any) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def _dtype(name: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _to_storable(x: np.ndarray) -> np.ndarray:
  """safetensors.numpy has no bfloat16: store its bits as uint16."""
  x = np.ascontiguousarray(x)
  return x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x


def _from_stored(x: np.ndarray, dtype_name: str) -> np.ndarray:
  return x.view(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else x


def _crc(x: np.ndarray) -> int:
  return zlib.crc32(memoryview(np.ascontiguousarray(x)).cast("B"))


def _cast_values(values: np.ndarray, value_dtype: str, path: str) -> np.ndarray:
  with np.errstate(over="ignore"):
    out = values.astype(_dtype(value_dtype))
  if not np.all(np.isfinite(out.astype(np.float32)) | ~np.isfinite(values)):
    raise ValueError(f"export.py: {path} overflows {value_dtype} (max |w| = "
                     f"{np.abs(values).max()}); expected values within its range")
  return out


def _default_masks(params: Any) -> Any:
  """Masks from the exact zeros of the BERT encoder matrices (all-True elsewhere)."""
  where = masks_lib.select(params, masks_lib.BERT_ENCODER_MATRICES)
  return jax.tree.map(lambda p, w: _np(p) != 0 if w else np.ones(np.shape(p), bool),
                      params, where)


def _check_masks(params: Any, masks: Any) -> dict[str, np.ndarray]:
  """Flat ``path -> bool array`` masks, checked against the params' structure/shapes."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  try:
    mask_leaves = treedef.flatten_up_to(masks)
  except (ValueError, TypeError) as e:
    raise ValueError(f"export.py: masks do not match the params tree ({e}); expected a "
                     "bool tree shaped like params (see jaxprune.magnitude_masks)") from None
  out = {}
  for (path, p), m in zip(flat, mask_leaves):
    path, m = masks_lib.path_str(path), _np(m)
    if m.shape != np.shape(p) or m.dtype != bool:
      raise ValueError(f"export.py: mask of {path} is {m.dtype}{list(m.shape)}; expected "
                       f"bool{list(np.shape(p))}")
    out[path] = m
  return out


def _is_kernel(path: str) -> bool:
  return path.endswith("/kernel") or path == "kernel"


# ----------------------------------------------------------------------- N:M patterns


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
    >>> check_nm(np.array([[1., 3., 2., 0.]]), "w")   # doctest: +SKIP
    PatternError: w: inputs 0-3 of output row 0 hold 3 nonzeros; 2:4 allows at most 2
  """
  if hasattr(weight, "detach"):  # a torch tensor
    weight = weight.detach().cpu()
    nonzero = (weight != 0).numpy()
  else:
    nonzero = _np(weight) != 0
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
  return rows % _SEMI_MIN_ROWS == 0 and cols % _SEMI_MIN_COLS == 0 and rows > 0 and cols > 0


def _pattern_name(keep_out_in: np.ndarray, pattern: masks_lib.Pattern, path: str) -> str:
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
    raise TypeError(f"export.py: pattern {pattern!r}; expected None, masks.NM or masks.Blocks")
  if keep_out_in.shape[1] % 4 == 0 and _nm_violation(keep_out_in, 2, 4) is None:
    return "2:4"
  return "unstructured"


# --------------------------------------------------------------------------- encoding


def _encoded_sizes(rows: int, cols: int, nnz: int, vbytes: int) -> dict[str, int]:
  ibytes = 2 if cols <= 65536 else 4
  return {
      "bitmask": (rows * cols + 7) // 8 + nnz * vbytes,
      "csr": 4 * (rows + 1) + nnz * (ibytes + vbytes),
      "csr256": 2 * rows * (-(-cols // _SLAB)) + nnz * (1 + vbytes),
  }


def _encode(keep: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
  """Index arrays of one (rows, cols) keep-mask (values are stored by the caller)."""
  rows, cols = keep.shape
  if encoding == "bitmask":
    return {"bitmask": np.packbits(keep.ravel(), bitorder="little")}
  if encoding == "csr":
    indptr = np.zeros(rows + 1, np.int32)
    np.cumsum(keep.sum(1), out=indptr[1:])
    idx_dtype = np.uint16 if cols <= 65536 else np.int32
    return {"indptr": indptr, "indices": np.nonzero(keep)[1].astype(idx_dtype)}
  slabs = -(-cols // _SLAB)
  padded = np.zeros((rows, slabs * _SLAB), bool)
  padded[:, :cols] = keep
  counts = padded.reshape(rows, slabs, _SLAB).sum(-1).astype(np.uint16)
  return {"counts": counts, "offsets": (np.nonzero(keep)[1] % _SLAB).astype(np.uint8)}


def _decode_index(info: dict[str, Any], arrays: dict[str, np.ndarray], path: str
                  ) -> np.ndarray:
  """Where the kept values of one stored matrix go in its flat row-major array.

  A bool mask for ``bitmask`` (assigning through it beats positions by 10-40%), int64
  positions for the CSR encodings (nnz-sized, small at high sparsity).
  """
  rows, cols = (info["shape"][::-1] if info["transposed"] else info["shape"])
  nnz, enc = info["nnz"], info["encoding"]
  if enc == "bitmask":
    bits = arrays["bitmask"]
    if bits.dtype != np.uint8 or bits.size != (rows * cols + 7) // 8:
      raise ArtifactError(f"{path}: bitmask has {bits.size} bytes; expected "
                          f"{(rows * cols + 7) // 8}")
    index = np.unpackbits(bits, count=rows * cols, bitorder="little").view(bool)
    count = int(np.count_nonzero(index))
  elif enc == "csr":
    indptr, indices = arrays["indptr"].astype(np.int64), arrays["indices"].astype(np.int64)
    if (indptr.shape != (rows + 1,) or indptr[0] != 0 or indptr[-1] != indices.size
        or np.any(np.diff(indptr) < 0) or np.any(indices >= cols)):
      raise ArtifactError(f"{path}: inconsistent CSR indptr/indices for a {rows}x{cols} "
                          "matrix")
    index = np.repeat(np.arange(rows, dtype=np.int64) * cols, np.diff(indptr)) + indices
    count = index.size
  elif enc == "csr256":
    counts, offsets = arrays["counts"], arrays["offsets"].astype(np.int64)
    slabs = -(-cols // _SLAB)
    if counts.shape != (rows, slabs) or int(counts.sum(dtype=np.int64)) != offsets.size:
      raise ArtifactError(f"{path}: csr256 counts {list(counts.shape)} do not fit "
                          f"{offsets.size} offsets of a {rows}x{cols} matrix")
    slab = np.repeat(np.arange(rows * slabs, dtype=np.int64), counts.ravel())
    col = (slab % slabs) * _SLAB + offsets
    if np.any(col >= cols):
      raise ArtifactError(f"{path}: csr256 column offsets past column {cols}")
    index = (slab // slabs) * cols + col
    count = index.size
  else:
    raise ArtifactError(f"{path}: unknown encoding {enc!r}; expected one of "
                        f"{_ENCODINGS[1:] + ('dense',)}")
  if count != nnz:
    raise ArtifactError(f"{path}: {count} positions decoded; header says nnz={nnz}")
  return index


_PARTS = {"bitmask": ("bitmask",), "csr": ("indptr", "indices"), "csr256": ("counts", "offsets")}


# ------------------------------------------------------------------------ size report


class MatrixSize(NamedTuple):
  """Storage of one compressed matrix (``dense_bytes`` in the params' dtype,
  ``dense_value_bytes`` in the value dtype)."""
  path: str
  shape: tuple[int, ...]
  nnz: int
  sparsity: float
  pattern: str
  encoding: str
  dense_bytes: int
  dense_value_bytes: int
  stored_bytes: int


@dataclasses.dataclass(frozen=True)
class SizeReport:
  """Bytes of a sparse artifact against dense storage of the same tensors.

  ``matrices``: one `MatrixSize` per compressed matrix. ``other_bytes``: the densely
  stored tensors. ``file_bytes``: the whole file (header included).
  """
  matrices: tuple[MatrixSize, ...]
  other_bytes: int
  file_bytes: int

  @property
  def dense_matrix_bytes(self) -> int:
    """The compressed matrices stored densely in the params' dtype (fp32 usually)."""
    return sum(r.dense_bytes for r in self.matrices)

  @property
  def dense_value_dtype_bytes(self) -> int:
    """The compressed matrices stored densely in the value dtype (e.g. fp16)."""
    return sum(r.dense_value_bytes for r in self.matrices)

  @property
  def stored_matrix_bytes(self) -> int:
    return sum(r.stored_bytes for r in self.matrices)

  @property
  def ratio(self) -> float:
    """Stored / dense (params dtype) bytes of the compressed matrices."""
    return self.stored_matrix_bytes / max(self.dense_matrix_bytes, 1)

  @property
  def value_dtype_ratio(self) -> float:
    """Stored / dense (value dtype) bytes of the compressed matrices."""
    return self.stored_matrix_bytes / max(self.dense_value_dtype_bytes, 1)

  def format(self, per_matrix: bool = False) -> str:
    """A table: per matrix (optional) and totals with ratios."""
    lines = []
    if per_matrix:
      w = max([len(r.path) for r in self.matrices] + [4])
      for r in self.matrices:
        lines.append(f"{r.path:<{w}}  {'x'.join(map(str, r.shape)):>10}  {r.sparsity:7.2%}  "
                     f"{r.pattern:>12}  {r.encoding:>7}  {r.dense_bytes:>11,} -> "
                     f"{r.stored_bytes:>10,} B")
    encs = sorted({r.encoding for r in self.matrices})
    lines += [
        f"matrices: {len(self.matrices)} compressed ({', '.join(encs) or '-'}): "
        f"{self.stored_matrix_bytes:,} B = {self.ratio:.2%} of {self.dense_matrix_bytes:,} B"
        f" dense, {self.value_dtype_ratio:.2%} of {self.dense_value_dtype_bytes:,} B dense "
        "in the value dtype",
        f"other tensors (dense): {self.other_bytes:,} B; file: {self.file_bytes:,} B",
    ]
    return "\n".join(lines)


def _size_report(header: dict[str, Any], file_bytes: int) -> SizeReport:
  rows, other = [], 0
  for path, info in header["tensors"].items():
    if info["encoding"] == "dense":
      other += info["stored_bytes"]
      continue
    n = int(np.prod(info["shape"]))
    rows.append(MatrixSize(path, tuple(info["shape"]), info["nnz"], info["sparsity"],
                           info["pattern"], info["encoding"], n * _dtype(info["dtype"]).itemsize,
                           n * _dtype(info["value_dtype"]).itemsize, info["stored_bytes"]))
  return SizeReport(tuple(rows), other, file_bytes)


# ------------------------------------------------------------------------------ write


def _artifact_path(path: str | os.PathLike) -> Path:
  p = Path(path)
  return p / ARTIFACT_NAME if p.is_dir() else p


def export_sparse(params: Any, masks: Any | None, out: str | os.PathLike,
                  value_dtype: str = "float32", *, config: bert.BertConfig | None = None,
                  encoding: str = "auto", dense_dtype: str | None = None,
                  pattern: masks_lib.Pattern = None) -> SizeReport:
  """Writes params with each pruned matrix compressed, in one safetensors file.

  A leaf is compressed when it is a 2-D float matrix whose mask prunes something; the
  rest is stored densely. Pruned weights are dropped whatever their value (the masks
  are applied), so the artifact holds ``apply_masks(params, masks)``.

  Args:
    params: a params tree (e.g. of `jaxprune.models.BertForSequenceClassification`).
    masks: a bool tree shaped like params; ``None``: the exact zeros of the BERT encoder
      matrices (`jaxprune.masks.BERT_ENCODER_MATRICES`).
    out: the file to write (a directory gets ``model.sparse.safetensors`` inside).
    value_dtype: ``"float32"`` (bitwise round trip), ``"float16"`` or ``"bfloat16"``
      for the kept values of compressed matrices.
    config: the model config, stored in the header so the artifact is self-contained.
    encoding: ``"auto"`` (smallest per matrix), ``"bitmask"``, ``"csr"`` or ``"csr256"``.
    dense_dtype: cast dense float tensors (embeddings, LayerNorm, ...) to this dtype;
      ``None`` keeps them as they are.
    pattern: ``masks.NM`` / ``masks.Blocks`` to validate and record; ``None`` records
      ``"2:4"`` when a matrix happens to satisfy it, else ``"unstructured"``.

  Returns:
    The `SizeReport` of the written file.

  Example:
    >>> report = export_sparse(params, masks, "/tmp/a.safetensors", "float16")  # doctest: +SKIP
    >>> report.ratio  # doctest: +SKIP
    0.0398
  """
  from safetensors.numpy import save_file

  if value_dtype not in _VALUE_DTYPES:
    raise ValueError(f"export.py: value_dtype {value_dtype!r}; expected one of {_VALUE_DTYPES}")
  if dense_dtype is not None and dense_dtype not in _VALUE_DTYPES:
    raise ValueError(f"export.py: dense_dtype {dense_dtype!r}; expected None or one of "
                     f"{_VALUE_DTYPES}")
  if encoding not in _ENCODINGS:
    raise ValueError(f"export.py: encoding {encoding!r}; expected one of {_ENCODINGS}")
  flat_masks = _check_masks(params, _default_masks(params) if masks is None else masks)
  tensors: dict[str, np.ndarray] = {}
  entries: dict[str, dict[str, Any]] = {}
  for path, leaf in _flat(params).items():
    w, keep = _np(leaf), flat_masks[path]
    if w.ndim == 2 and np.issubdtype(w.dtype, np.floating) and not keep.all():
      transposed = _is_kernel(path)
      w2, keep2 = (w.T, keep.T) if transposed else (w, keep)
      values = _cast_values(w2[keep2], value_dtype, path)
      nnz = int(values.size)
      sizes = _encoded_sizes(*keep2.shape, nnz, values.dtype.itemsize)
      enc = min(sizes, key=sizes.get) if encoding == "auto" else encoding
      parts = {"values": values, **_encode(keep2, enc)}
      for part, arr in parts.items():
        tensors[f"{path}:{part}"] = _to_storable(arr)
      entries[path] = dict(
          shape=list(w.shape), dtype=w.dtype.name, encoding=enc, transposed=transposed,
          value_dtype=value_dtype, nnz=nnz, sparsity=1.0 - nnz / w.size,
          pattern=_pattern_name(keep2, pattern, path),
          stored_bytes=sum(a.nbytes for a in parts.values()))
    else:
      w = np.where(keep, w, np.zeros((), w.dtype)) if not keep.all() else w
      stored = w
      if dense_dtype is not None and np.issubdtype(w.dtype, np.floating):
        stored = _cast_values(w, dense_dtype, path)
      tensors[path] = _to_storable(stored)
      entries[path] = dict(shape=list(w.shape), dtype=w.dtype.name, encoding="dense",
                           value_dtype=stored.dtype.name, stored_bytes=stored.nbytes)
  header = {
      "format": FORMAT,
      "version": VERSION,
      "config": None if config is None else config.to_hf_dict(),
      "tensors": entries,
      "crc32": {name: _crc(arr) for name, arr in tensors.items()},
  }
  path = _artifact_path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  try:
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return _size_report(header, path.stat().st_size)


# ------------------------------------------------------------------------------- read


def _open(path: Path):
  from safetensors import SafetensorError, safe_open
  if not path.is_file():
    raise ArtifactError(f"{path}: no such file (expected a {FORMAT} artifact, "
                        f"{ARTIFACT_NAME})")
  try:
    return safe_open(str(path), "np")
  except (SafetensorError, OSError, ValueError) as e:
    raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from None


def _parse_header(path: Path, metadata: Mapping[str, str] | None) -> dict[str, Any]:
  if not metadata or _META_KEY not in metadata:
    raise ArtifactError(f"{path}: no '{_META_KEY}' header; expected a {FORMAT} artifact "
                        "(a Hugging Face export loads with jaxprune.models.from_pretrained)")
  try:
    header = json.loads(metadata[_META_KEY])
  except json.JSONDecodeError as e:
    raise ArtifactError(f"{path}: header is not valid JSON ({e.msg} at {e.pos})") from None
  if not isinstance(header, dict) or header.get("format") != FORMAT:
    raise ArtifactError(f"{path}: header format "
                        f"{header.get('format') if isinstance(header, dict) else header!r}; "
                        f"expected {FORMAT!r}")
  if header.get("version") != VERSION:
    raise ArtifactError(f"{path}: artifact version {header.get('version')!r}; this jaxprune "
                        f"reads version {VERSION} (re-export it with a matching jaxprune)")
  for key in ("tensors", "crc32"):
    if not isinstance(header.get(key), dict):
      raise ArtifactError(f"{path}: header has no '{key}' table")
  return header


def read_header(path: str | os.PathLike) -> dict[str, Any]:
  """The validated JSON header of a sparse artifact (format, version, config, tensors).

  Example:
    >>> read_header("/tmp/a.safetensors")["tensors"]["classifier/kernel"]  # doctest: +SKIP
    {'shape': [384, 2], 'dtype': 'float32', 'encoding': 'dense', ...}
  """
  path = _artifact_path(path)
  with _open(path) as f:
    return _parse_header(path, f.metadata())


def _load_flat(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  from safetensors import SafetensorError
  path = _artifact_path(path)
  with _open(path) as f:
    header = _parse_header(path, f.metadata())
    names = set(f.keys())
    expected = set(header["crc32"])
    if names != expected:
      missing, extra = sorted(expected - names), sorted(names - expected)
      raise ArtifactError(f"{path}: stored tensors do not match the header (missing: "
                          f"{missing[:4]}, unexpected: {extra[:4]})")
    try:
      stored = {name: f.get_tensor(name) for name in sorted(names)}
    except (SafetensorError, OSError, ValueError) as e:
      raise ArtifactError(f"{path}: truncated or unreadable tensor data ({e})") from None
  for name, arr in stored.items():
    if _crc(arr) != header["crc32"][name]:
      raise ArtifactError(f"{path}: checksum mismatch in {name!r} (the file is corrupted)")
  flat = {}
  try:
    for tpath, info in header["tensors"].items():
      dtype = _dtype(info["dtype"])
      if info["encoding"] == "dense":
        arr = _from_stored(stored[tpath], info["value_dtype"]).astype(dtype)
        if list(arr.shape) != info["shape"]:
          raise ArtifactError(f"{path}: {tpath} has shape {list(arr.shape)}; header says "
                              f"{info['shape']}")
        flat[tpath] = arr
        continue
      parts = {p: stored[f"{tpath}:{p}"] for p in _PARTS.get(info["encoding"], ())}
      values = _from_stored(stored[f"{tpath}:values"], info["value_dtype"]).astype(dtype)
      index = _decode_index(info, parts, f"{path}: {tpath}")
      if values.size != info["nnz"]:
        raise ArtifactError(f"{path}: {tpath} has {values.size} values for nnz="
                            f"{info['nnz']}")
      shape = info["shape"][::-1] if info["transposed"] else info["shape"]
      w = np.zeros(int(np.prod(shape)), dtype)
      w[index] = values
      w = w.reshape(shape)
      flat[tpath] = np.ascontiguousarray(w.T) if info["transposed"] else w
  except KeyError as e:
    raise ArtifactError(f"{path}: header entry or tensor {e} missing") from None
  return flat, header


def load_sparse(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a sparse artifact back into a params tree (numpy arrays, the params' dtypes).

  Fp32 values come back bitwise; fp16/bf16 values are widened exactly to the params'
  dtype. Raises `ArtifactError` (one line) for a missing, truncated, corrupted
  (per-tensor CRC32) or version-mismatched file.

  Example:
    >>> params = load_sparse("/tmp/a.safetensors")  # doctest: +SKIP
    >>> model.apply({"params": params}, ids).logits  # doctest: +SKIP
  """
  return _unflat(_load_flat(path)[0])


def load_sparse_config(path: str | os.PathLike) -> bert.BertConfig:
  """The `BertConfig` stored in a sparse artifact's header (error if there is none)."""
  header = read_header(path)
  if not header.get("config"):
    raise ArtifactError(f"{_artifact_path(path)}: header has no config (export it with "
                        "config=...)")
  return bert.BertConfig.from_hf_dict(header["config"])


def load_sparse_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A sparse artifact as a PyTorch-layout HF state dict of numpy arrays.

  Example:
    >>> sd = load_sparse_state_dict("/tmp/a.safetensors")  # doctest: +SKIP
    >>> tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # doctest: +SKIP
  """
  return convert.flax_to_hf(load_sparse(path))


def size_report(path: str | os.PathLike) -> SizeReport:
  """The `SizeReport` of an existing sparse artifact."""
  path = _artifact_path(path)
  return _size_report(read_header(path), path.stat().st_size)


# ------------------------------------------------------------------ dense HF and 2:4


def export_hf(params: Any, config: bert.BertConfig, out_dir: str | os.PathLike,
              tokenizer_from: str | os.PathLike | None = None, masks: Any | None = None
              ) -> Path:
  """`jaxprune.models.export_hf` of ``apply_masks(params, masks)``: exact zeros, HF layout.

  Example:
    >>> export_hf(params, config, "/tmp/hf", masks=masks)  # doctest: +SKIP
    >>> transformers.BertForSequenceClassification.from_pretrained("/tmp/hf")  # doctest: +SKIP
  """
  if masks is not None:
    _check_masks(params, masks)
    params = masks_lib.apply_masks(params, masks)
  return convert.export_hf(params, config, out_dir, tokenizer_from=tokenizer_from)


def _export_semi_structured(params: Any, masks: Any | None, config: bert.BertConfig,
                            out: Path, tokenizer_from, value_dtype: str) -> Path:
  if value_dtype != "float16":
    raise ValueError(f"export.py: 2:4 export value_dtype {value_dtype!r}; expected 'float16' "
                     "(a dtype of torch's 2:4 kernels that safetensors.numpy can write)")
  flat_masks = _check_masks(params, _default_masks(params) if masks is None else masks)
  flat = {p: np.where(flat_masks[p], _np(w), np.zeros((), _np(w).dtype))
          for p, w in _flat(params).items()}
  matrices = []
  for path, w in flat.items():
    if w.ndim != 2 or flat_masks[path].all():
      continue
    hf_key, transposed = convert._hf_key(path)  # pylint: disable=protected-access
    w_out_in = w.T if transposed else w
    check_nm(w_out_in, hf_key)
    if not semi_structured_shape_ok(w_out_in.shape):
      raise PatternError(f"{hf_key}: shape {list(w_out_in.shape)}; torch 2:4 kernels need "
                         f"rows % {_SEMI_MIN_ROWS} == 0 and cols % {_SEMI_MIN_COLS} == 0")
    matrices.append(hf_key)
  if not matrices:
    raise PatternError("export.py: no pruned matrix to export as 2:4; expected masks that "
                       "prune the encoder matrices 2:4 (masks.NM(2, 4))")
  cast = {p: (_cast_values(w, value_dtype, p) if np.issubdtype(w.dtype, np.floating) else w)
          for p, w in flat.items()}
  convert.export_hf(_unflat(cast), config, out, tokenizer_from=tokenizer_from)
  manifest = {"format": "jaxprune-2:4", "version": VERSION, "pattern": "2:4",
              "dtype": value_dtype, "matrices": matrices}
  (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
  return out


def export_model(params: Any, masks: Any | None, config: bert.BertConfig,
                 out: str | os.PathLike, format: str = "hf",  # pylint: disable=redefined-builtin
                 tokenizer_from: str | os.PathLike | None = None,
                 value_dtype: str | None = None) -> Path:
  """Exports a pruned classifier to directory ``out`` in one of `FORMATS` (the CLI's call).

  * ``"hf"``: `export_hf` (dense, exact zeros; value_dtype is ignored, params' dtype).
  * ``"sparse"``: ``out/model.sparse.safetensors`` (`export_sparse`, value_dtype default
    float32) plus ``config.json`` and the tokenizer files, so tokenizers load from ``out``.
  * ``"2:4"``: a float16 (default) HF directory whose pruned matrices are checked to be
    2:4 with shapes torch's 2:4 kernels accept (`PatternError` otherwise), plus
    ``sparsity.json`` listing them.

  Args:
    params, masks, config: the model; ``masks=None`` takes the exact zeros of the BERT
      encoder matrices as the masks.
    out: output directory (replaced if it exists).
    format: ``"hf"``, ``"sparse"`` or ``"2:4"``.
    tokenizer_from: a model name or directory whose tokenizer files are copied along.
    value_dtype: see above.

  Returns:
    The output directory.

  Example:
    >>> export_model(params, masks, config, "/tmp/out", format="sparse",
    ...              tokenizer_from="minilm-l6", value_dtype="float16")  # doctest: +SKIP
  """
  out = Path(out)
  if format == "hf":
    return export_hf(params, config, out, tokenizer_from=tokenizer_from, masks=masks)
  if format == "2:4":
    return _export_semi_structured(params, masks, config, out, tokenizer_from,
                                   value_dtype or "float16")
  if format != "sparse":
    raise ValueError(f"export.py: format {format!r}; expected one of {FORMATS}")
  with convert.atomic_directory(out) as tmp:
    export_sparse(params, masks, tmp / ARTIFACT_NAME, value_dtype or "float32", config=config)
    (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    if tokenizer_from is not None:
      convert.copy_tokenizer(tokenizer_from, tmp)
  return out
