"""Hugging Face directories of a pruned model, dense and 2:4, and the CLI's entry point.

This module writes ``BertForSequenceClassification`` directories: ``"hf"`` with the
pruned weights as exact zeros (`export_hf`), and ``"2:4"`` in float16 with every pruned
matrix checked by `jaxprune.export.patterns.check_semi_structured` and listed in
``sparsity.json``. `export_model` picks one of `FORMATS`, delegating ``"sparse"`` to
`jaxprune.export.artifact.export_sparse`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune import masks as masks_lib
from jaxprune import paths
from jaxprune.errors import PatternError
from jaxprune.export import artifact
from jaxprune.export import codec
from jaxprune.export import patterns
from jaxprune.models import bert
from jaxprune.models import convert

MANIFEST_NAME = "sparsity.json"
FORMATS = ("hf", "sparse", "2:4")


def export_hf(params: Any, config: bert.BertConfig, out_dir: str | os.PathLike,
              tokenizer_from: str | os.PathLike | None = None, masks: Any | None = None
              ) -> Path:
  """`jaxprune.models.export_hf` of ``apply_masks(params, masks)``: exact zeros, HF layout.

  Example::

    export_hf(params, config, "hf", masks=masks)
    tmodel = transformers.BertForSequenceClassification.from_pretrained("hf")
  """
  if masks is not None:
    artifact.flat_masks(params, masks)
    params = masks_lib.apply_masks(params, masks)
  return convert.export_hf(params, config, out_dir, tokenizer_from=tokenizer_from)


def _export_semi_structured(params: Any, masks: Any | None, config: bert.BertConfig,
                            out: Path, tokenizer_from, value_dtype: str) -> Path:
  if value_dtype != "float16":
    raise ValueError(f"2:4 export value_dtype {value_dtype!r}; expected 'float16' "
                     "(a dtype of torch's 2:4 kernels that safetensors.numpy can write)")
  masks_by_path = artifact.flat_masks(params, masks)
  flat = {}
  for path, w in convert.flatten(params).items():
    w = codec.to_numpy(w)
    flat[path] = np.where(masks_by_path[path], w, np.zeros((), w.dtype))
  matrices = []
  for path, w in flat.items():
    if w.ndim != 2 or masks_by_path[path].all():
      continue
    hf_key, transposed = convert._hf_key(path)  # pylint: disable=protected-access
    patterns.check_semi_structured(w.T if transposed else w, hf_key)
    matrices.append(hf_key)
  if not matrices:
    raise PatternError("no pruned matrix to export as 2:4; expected masks that prune the "
                       "encoder matrices 2:4 (masks.NM(2, 4))")
  cast = {p: (codec.cast_values(w, value_dtype, p) if np.issubdtype(w.dtype, np.floating)
              else w)
          for p, w in flat.items()}
  convert.export_hf(convert.unflatten(cast), config, out, tokenizer_from=tokenizer_from)
  manifest = {"format": "jaxprune-2:4", "version": artifact.VERSION, "pattern": "2:4",
              "dtype": value_dtype, "matrices": matrices}
  paths.write_text(paths.path(out) / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
  return paths.path(out)


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

  Example::

    export_model(params, masks, config, "out", format="sparse",
                 tokenizer_from="minilm-l6", value_dtype="float16")
  """
  if format == "hf":
    return export_hf(params, config, out, tokenizer_from=tokenizer_from, masks=masks)
  if format == "2:4":
    return _export_semi_structured(params, masks, config, out, tokenizer_from,
                                   value_dtype or "float16")
  if format != "sparse":
    raise ValueError(f"format {format!r}; expected one of {FORMATS}")
  with paths.staged_dir(out) as tmp:
    artifact.export_sparse(params, masks, tmp / artifact.ARTIFACT_NAME,
                           value_dtype or "float32", config=config)
    (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    if tokenizer_from is not None:
      convert.copy_tokenizer(tokenizer_from, tmp)
  return paths.path(out)
