"""The sparse artifact: one safetensors file with each pruned matrix compressed.

This module writes a params tree as ``model.sparse.safetensors`` (`export_sparse`), reads
it back, checked against its versioned JSON header and per-tensor CRC32 (`load_sparse`,
`read_header`, `load_sparse_config`, `load_sparse_state_dict`), and measures it against
dense storage (`SizeReport`, `size_report`). The layout is described in
`jaxprune.export`; the per-matrix encodings live in `jaxprune.export.codec` and the
pattern names in `jaxprune.export.patterns`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune import paths
from jaxprune.errors import ArtifactError
from jaxprune.export import codec
from jaxprune.export import patterns
from jaxprune.models import bert
from jaxprune.models import convert

FORMAT = "jaxprune-sparse"
VERSION = 1
ARTIFACT_NAME = "model.sparse.safetensors"

_META_KEY = "jaxprune"


# ------------------------------------------------------------------------------ masks


def _default_masks(params: Any) -> Any:
  """Masks from the exact zeros of the BERT encoder matrices (all-True elsewhere)."""
  where = masks_lib.select(params, masks_lib.BERT_ENCODER_MATRICES)
  return jax.tree.map(
      lambda p, w: codec.to_numpy(p) != 0 if w else np.ones(np.shape(p), bool),
      params, where)


def flat_masks(params: Any, masks: Any | None) -> dict[str, np.ndarray]:
  """Flat ``path -> bool array`` masks, checked against the params' structure/shapes.

  ``masks=None`` takes the exact zeros of the BERT encoder matrices as the masks.
  """
  if masks is None:
    masks = _default_masks(params)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  try:
    mask_leaves = treedef.flatten_up_to(masks)
  except (ValueError, TypeError) as e:
    raise ValueError(f"masks do not match the params tree ({e}); expected a bool tree "
                     "shaped like params (see jaxprune.magnitude_masks)") from None
  out = {}
  for (path, p), m in zip(flat, mask_leaves):
    path, m = masks_lib.path_str(path), codec.to_numpy(m)
    if m.shape != np.shape(p) or m.dtype != bool:
      raise ValueError(f"mask of {path} is {m.dtype}{list(m.shape)}; expected "
                       f"bool{list(np.shape(p))}")
    out[path] = m
  return out


def _is_kernel(path: str) -> bool:
  return path.endswith("/kernel") or path == "kernel"


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
                           info["pattern"], info["encoding"],
                           n * codec.dtype_of(info["dtype"]).itemsize,
                           n * codec.dtype_of(info["value_dtype"]).itemsize,
                           info["stored_bytes"]))
  return SizeReport(tuple(rows), other, file_bytes)


# ------------------------------------------------------------------------------ write


def _artifact_path(path: str | os.PathLike):
  p = paths.path(path)
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

  Example::

    report = export_sparse(params, masks, "m.sparse.safetensors", "float16")
    ratio = report.ratio  # 0.0398 for BERT-base at 95% sparsity
  """
  from safetensors.numpy import save_file

  if value_dtype not in codec.VALUE_DTYPES:
    raise ValueError(f"value_dtype {value_dtype!r}; expected one of {codec.VALUE_DTYPES}")
  if dense_dtype is not None and dense_dtype not in codec.VALUE_DTYPES:
    raise ValueError(f"dense_dtype {dense_dtype!r}; expected None or one of "
                     f"{codec.VALUE_DTYPES}")
  if encoding not in codec.ENCODINGS:
    raise ValueError(f"encoding {encoding!r}; expected one of {codec.ENCODINGS}")
  masks_by_path = flat_masks(params, masks)
  tensors: dict[str, np.ndarray] = {}
  entries: dict[str, dict[str, Any]] = {}
  for path, leaf in convert.flatten(params).items():
    w, keep = codec.to_numpy(leaf), masks_by_path[path]
    if w.ndim == 2 and np.issubdtype(w.dtype, np.floating) and not keep.all():
      transposed = _is_kernel(path)
      w2, keep2 = (w.T, keep.T) if transposed else (w, keep)
      values = codec.cast_values(w2[keep2], value_dtype, path)
      nnz = int(values.size)
      sizes = codec.encoded_sizes(*keep2.shape, nnz, values.dtype.itemsize)
      enc = min(sizes, key=sizes.get) if encoding == "auto" else encoding
      parts = {"values": values, **codec.encode(keep2, enc)}
      for part, arr in parts.items():
        tensors[f"{path}:{part}"] = codec.to_storable(arr)
      entries[path] = dict(
          shape=list(w.shape), dtype=w.dtype.name, encoding=enc, transposed=transposed,
          value_dtype=value_dtype, nnz=nnz, sparsity=1.0 - nnz / w.size,
          pattern=patterns.pattern_name(keep2, pattern, path),
          stored_bytes=sum(a.nbytes for a in parts.values()))
    else:
      w = np.where(keep, w, np.zeros((), w.dtype)) if not keep.all() else w
      stored = w
      if dense_dtype is not None and np.issubdtype(w.dtype, np.floating):
        stored = codec.cast_values(w, dense_dtype, path)
      tensors[path] = codec.to_storable(stored)
      entries[path] = dict(shape=list(w.shape), dtype=w.dtype.name, encoding="dense",
                           value_dtype=stored.dtype.name, stored_bytes=stored.nbytes)
  header = {
      "format": FORMAT,
      "version": VERSION,
      "config": None if config is None else config.to_hf_dict(),
      "tensors": entries,
      "crc32": {name: codec.crc32(arr) for name, arr in tensors.items()},
  }
  with paths.staged_file(_artifact_path(out)) as tmp:
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    size = tmp.stat().st_size
  return _size_report(header, size)


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

  Example::

    info = read_header("m.sparse.safetensors")["tensors"]["classifier/kernel"]
    # {'shape': [384, 2], 'dtype': 'float32', 'encoding': 'dense', ...}
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
    if codec.crc32(arr) != header["crc32"][name]:
      raise ArtifactError(f"{path}: checksum mismatch in {name!r} (the file is corrupted)")
  flat = {}
  try:
    for tpath, info in header["tensors"].items():
      dtype = codec.dtype_of(info["dtype"])
      if info["encoding"] == "dense":
        arr = codec.from_stored(stored[tpath], info["value_dtype"]).astype(dtype)
        if list(arr.shape) != info["shape"]:
          raise ArtifactError(f"{path}: {tpath} has shape {list(arr.shape)}; header says "
                              f"{info['shape']}")
        flat[tpath] = arr
        continue
      parts = {p: stored[f"{tpath}:{p}"] for p in codec.PARTS.get(info["encoding"], ())}
      values = codec.from_stored(stored[f"{tpath}:values"], info["value_dtype"]).astype(dtype)
      index = codec.decode_index(info, parts, f"{path}: {tpath}")
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

  Example::

    params = load_sparse("m.sparse.safetensors")
    logits = model.apply({"params": params}, ids).logits
  """
  return convert.unflatten(_load_flat(path)[0])


def load_sparse_config(path: str | os.PathLike) -> bert.BertConfig:
  """The `BertConfig` stored in a sparse artifact's header (error if there is none)."""
  header = read_header(path)
  if not header.get("config"):
    raise ArtifactError(f"{_artifact_path(path)}: header has no config (export it with "
                        "config=...)")
  return bert.BertConfig.from_hf_dict(header["config"])


def load_sparse_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A sparse artifact as a PyTorch-layout HF state dict of numpy arrays.

  Example::

    sd = load_sparse_state_dict("m.sparse.safetensors")
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  """
  return convert.flax_to_hf(load_sparse(path))


def size_report(path: str | os.PathLike) -> SizeReport:
  """The `SizeReport` of an existing sparse artifact."""
  path = _artifact_path(path)
  return _size_report(read_header(path), path.stat().st_size)
