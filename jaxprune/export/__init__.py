"""Pruned-model artifacts: dense HF, compressed sparse, and 2:4 for sparse tensor cores.

Three formats, one entry point (`export_model`, which the CLI calls):

* ``"hf"``: a Hugging Face ``BertForSequenceClassification`` directory with the pruned
  weights as exact zeros (`export_hf`, `jaxprune.models.export_hf` after
  `jaxprune.masks.apply_masks`). Any PyTorch user can load it.
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

The package, one responsibility a module: `jaxprune.export.codec` (the numpy encodings),
`jaxprune.export.patterns` (the N:M checks), `jaxprune.export.artifact` (the sparse
artifact's writer, reader and size report) and `jaxprune.export.hf` (HF and 2:4
directories, `export_model`). Everything public is re-exported here.
"""

from __future__ import annotations

from jaxprune.errors import ArtifactError
from jaxprune.errors import PatternError
from jaxprune.export.artifact import ARTIFACT_NAME
from jaxprune.export.artifact import FORMAT
from jaxprune.export.artifact import MatrixSize
from jaxprune.export.artifact import SizeReport
from jaxprune.export.artifact import VERSION
from jaxprune.export.artifact import export_sparse
from jaxprune.export.artifact import load_sparse
from jaxprune.export.artifact import load_sparse_config
from jaxprune.export.artifact import load_sparse_state_dict
from jaxprune.export.artifact import read_header
from jaxprune.export.artifact import size_report
from jaxprune.export.hf import FORMATS
from jaxprune.export.hf import MANIFEST_NAME
from jaxprune.export.hf import export_hf
from jaxprune.export.hf import export_model
from jaxprune.export.patterns import check_nm
from jaxprune.export.patterns import check_semi_structured
from jaxprune.export.patterns import semi_structured_shape_ok

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
    "check_semi_structured",
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
