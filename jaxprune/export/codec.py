"""Numpy encodings of one pruned matrix, and the byte-level helpers of the artifact.

This module turns a ``(rows, cols)`` keep-mask into the index arrays of one encoding
(``"bitmask"``, ``"csr"``, ``"csr256"``) and back into flat positions, computes the bytes
each encoding would take, and holds the dtype plumbing around them (bfloat16 stored as
``uint16`` bits, value casts that refuse overflow) and the CRC32 of a stored array. It
knows nothing of files, headers or params trees; `jaxprune.export.artifact` does.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jaxprune.errors import ArtifactError

ENCODINGS = ("auto", "bitmask", "csr", "csr256")
VALUE_DTYPES = ("float32", "float16", "bfloat16")
SLAB = 256
# The index arrays stored next to ``values`` for each encoding.
PARTS = {"bitmask": ("bitmask",), "csr": ("indptr", "indices"), "csr256": ("counts", "offsets")}


def to_numpy(x: Any) -> np.ndarray:
  """A host numpy array of ``x`` (a jax or numpy array, or anything array-like)."""
  return np.asarray(jax.device_get(x))


def dtype_of(name: str) -> np.dtype:
  """The numpy dtype named ``name`` (``"bfloat16"`` is ml_dtypes')."""
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def to_storable(x: np.ndarray) -> np.ndarray:
  """safetensors.numpy has no bfloat16: store its bits as uint16."""
  x = np.ascontiguousarray(x)
  return x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x


def from_stored(x: np.ndarray, dtype_name: str) -> np.ndarray:
  """The inverse of `to_storable` for an array stored as ``dtype_name``."""
  return x.view(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else x


def crc32(x: np.ndarray) -> int:
  """The CRC32 of an array's bytes (C order)."""
  return zlib.crc32(memoryview(np.ascontiguousarray(x)).cast("B"))


def cast_values(values: np.ndarray, value_dtype: str, path: str) -> np.ndarray:
  """``values`` in ``value_dtype``; a `ValueError` naming ``path`` if a value overflows."""
  with np.errstate(over="ignore"):
    out = values.astype(dtype_of(value_dtype))
  if not np.all(np.isfinite(out.astype(np.float32)) | ~np.isfinite(values)):
    raise ValueError(f"{path} overflows {value_dtype} (max |w| = "
                     f"{np.abs(values).max()}); expected values within its range")
  return out


def encoded_sizes(rows: int, cols: int, nnz: int, vbytes: int) -> dict[str, int]:
  """Bytes of each encoding of a ``rows x cols`` matrix with ``nnz`` kept values."""
  ibytes = 2 if cols <= 65536 else 4
  return {
      "bitmask": (rows * cols + 7) // 8 + nnz * vbytes,
      "csr": 4 * (rows + 1) + nnz * (ibytes + vbytes),
      "csr256": 2 * rows * (-(-cols // SLAB)) + nnz * (1 + vbytes),
  }


def encode(keep: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
  """Index arrays of one (rows, cols) keep-mask (values are stored by the caller)."""
  rows, cols = keep.shape
  if encoding == "bitmask":
    return {"bitmask": np.packbits(keep.ravel(), bitorder="little")}
  if encoding == "csr":
    indptr = np.zeros(rows + 1, np.int32)
    np.cumsum(keep.sum(1), out=indptr[1:])
    idx_dtype = np.uint16 if cols <= 65536 else np.int32
    return {"indptr": indptr, "indices": np.nonzero(keep)[1].astype(idx_dtype)}
  slabs = -(-cols // SLAB)
  padded = np.zeros((rows, slabs * SLAB), bool)
  padded[:, :cols] = keep
  counts = padded.reshape(rows, slabs, SLAB).sum(-1).astype(np.uint16)
  return {"counts": counts, "offsets": (np.nonzero(keep)[1] % SLAB).astype(np.uint8)}


def decode_index(info: dict[str, Any], arrays: dict[str, np.ndarray], path: str
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
    slabs = -(-cols // SLAB)
    if counts.shape != (rows, slabs) or int(counts.sum(dtype=np.int64)) != offsets.size:
      raise ArtifactError(f"{path}: csr256 counts {list(counts.shape)} do not fit "
                          f"{offsets.size} offsets of a {rows}x{cols} matrix")
    slab = np.repeat(np.arange(rows * slabs, dtype=np.int64), counts.ravel())
    col = (slab % slabs) * SLAB + offsets
    if np.any(col >= cols):
      raise ArtifactError(f"{path}: csr256 column offsets past column {cols}")
    index = (slab // slabs) * cols + col
    count = index.size
  else:
    raise ArtifactError(f"{path}: unknown encoding {enc!r}; expected one of "
                        f"{ENCODINGS[1:] + ('dense',)}")
  if count != nnz:
    raise ArtifactError(f"{path}: {count} positions decoded; header says nnz={nnz}")
  return index
