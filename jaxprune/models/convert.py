"""Hugging Face BERT checkpoints in and out of the Flax BERT.

``from_pretrained`` reads ``config.json`` + ``model.safetensors`` (keys with or without
the ``bert.`` prefix, with or without pooler and classifier), checks every tensor against
the model's abstract parameters and returns plain nested-dict params. ``export_hf``
writes the inverse: torch layout ((out, in) Linear weights) and names, so that
``transformers.BertForSequenceClassification.from_pretrained(out_dir)`` loads it.

Example::

  model, params, config = from_pretrained("minilm-l6", num_labels=2)
  export_hf(params, config, "/tmp/minilm-copy", tokenizer_from="minilm-l6")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune import paths
from jaxprune.errors import CheckpointError
from jaxprune.models import bert
from jaxprune.models import hub

__all__ = ["CheckpointError", "from_pretrained", "from_config", "export_hf", "hf_to_flax",
           "flax_to_hf", "flatten", "unflatten", "copy_tokenizer"]

log = logging.getLogger(__name__)

# Keys a BERT checkpoint may carry that a sequence classifier does not use.
_IGNORED_PREFIXES = ("cls.", "embeddings.position_ids", "bert.embeddings.position_ids",
                     "qa_outputs.", "lm_head.")
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json")
# Heads that are freshly initialised when the checkpoint lacks them (HF does the same).
_OPTIONAL_HEADS = ("bert/pooler/", "classifier/")


def flatten(tree: Any) -> dict[str, Any]:
  """A nested params dict as ``{"bert/encoder/layer/0/.../kernel": leaf}``."""
  return {masks_lib.path_str(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """The inverse of :func:`flatten`."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flax_path(hf_key: str) -> tuple[str, bool]:
  """Maps an HF state-dict key to (flax path, transpose?)."""
  parts = hf_key.split(".")
  if parts[0] != "classifier" and parts[0] != "bert":
    parts = ["bert", *parts]
  name = parts[-1]
  if name in ("gamma", "beta"):  # pre-2019 checkpoints
    name = {"gamma": "weight", "beta": "bias"}[name]
  owner = parts[-2]
  transpose = False
  if owner == "LayerNorm":
    name = {"weight": "scale", "bias": "bias"}[name]
  elif owner.endswith("_embeddings"):
    name = "embedding"
  elif name == "weight":
    name, transpose = "kernel", True
  return "/".join([*parts[:-1], name]), transpose


def _hf_key(flax_path: str) -> tuple[str, bool]:
  """Maps a flax path to (HF state-dict key, transpose?)."""
  *parents, name = flax_path.split("/")
  hf_name = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(name, name)
  return ".".join([*parents, hf_name]), name == "kernel"


def hf_to_flax(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames and transposes an HF BERT state dict to flat ``/``-joined flax paths.

  Keys the classifier does not use (MLM/NSP heads, ``position_ids`` buffers) are dropped.
  """
  flat = {}
  for key, value in state.items():
    if key.startswith(_IGNORED_PREFIXES):
      continue
    path, transpose = _flax_path(key)
    flat[path] = np.ascontiguousarray(value.T) if transpose else value
  return flat


def flax_to_hf(params: Any) -> dict[str, np.ndarray]:
  """The inverse of :func:`hf_to_flax`: a torch-layout state dict of numpy arrays."""
  out = {}
  for path, value in flatten(params).items():
    key, transpose = _hf_key(path)
    value = np.asarray(jax.device_get(value))
    out[key] = np.ascontiguousarray(value.T) if transpose else value
  return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file (expected model.safetensors with the weights)")
  try:
    return load_file(str(path))
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _read_config(directory: Path) -> dict[str, Any]:
  path = directory / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file (expected a Hugging Face BERT config.json)")
  try:
    d = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
  if d.get("model_type", "bert") != "bert":
    raise CheckpointError(f"{path}: model_type {d.get('model_type')!r}, expected 'bert'")
  return d


def _describe(items: list[str], limit: int = 6) -> str:
  head = ", ".join(items[:limit])
  return head + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def from_pretrained(name_or_path: str | os.PathLike, num_labels: int | None = None,
                    seed: int = 0, **config_overrides: Any
                    ) -> tuple[bert.BertForSequenceClassification, dict[str, Any], bert.BertConfig]:
  """Loads an HF BERT checkpoint as a Flax sequence classifier.

  Args:
    name_or_path: a local directory, an alias (``minilm-l6``) or a hub id (see
      :func:`jaxprune.models.resolve`).
    num_labels: classifier outputs; default: the checkpoint's (2 if it has no head).
      1 gives a regression head. A head whose shape does not match is an error.
    seed: seeds the N(0, 0.02) init of missing heads (pooler, classifier).
    **config_overrides: :class:`BertConfig` fields to change, e.g. ``dtype="bfloat16"``,
      ``hidden_dropout_prob=0.0``, ``classifier_relu=True``.

  Returns:
    ``(model, params, config)``; params is a nested dict of float arrays.

  Raises:
    CheckpointError: missing/invalid files, or tensors that are missing, unexpected or
      mis-shaped (all listed in one line).
  """
  directory = hub.resolve(name_or_path)
  hf_config = _read_config(directory)
  if num_labels is not None:
    config_overrides["num_labels"] = num_labels
  try:
    config = bert.BertConfig.from_hf_dict(hf_config, **config_overrides)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
  model = bert.BertForSequenceClassification(config)

  loaded = hf_to_flax(_read_safetensors(directory / "model.safetensors"))
  expected = dict(flatten(nn.unbox(bert.abstract_params(model))))
  missing = [k for k in expected if k not in loaded]
  fresh = [k for k in missing if k.startswith(_OPTIONAL_HEADS)]
  missing = [k for k in missing if k not in fresh]
  unexpected = [k for k in loaded if k not in expected]
  misshaped = [f"{k} {tuple(loaded[k].shape)} (expected {tuple(v.shape)})"
               for k, v in expected.items() if k in loaded and loaded[k].shape != v.shape]
  if missing or unexpected or misshaped:
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected),
                        ("mis-shaped", misshaped)):
      if items:
        problems.append(f"{what}: {_describe(items)}")
    raise CheckpointError(f"{directory / 'model.safetensors'} does not fit "
                          f"{config.num_hidden_layers}-layer BERT: " + "; ".join(problems))

  params = {k: np.asarray(loaded[k], dtype=expected[k].dtype) for k in expected if k in loaded}
  if fresh:
    init = flatten(bert.init_params(model, jax.random.key(seed), only=_OPTIONAL_HEADS))
    params.update({k: np.asarray(init[k]) for k in fresh})
    log.warning("%s: freshly initialised (not in the checkpoint): %s", directory,
                ", ".join(fresh))
  # Device arrays by a plain transfer: jnp.asarray of a host array runs an identity
  # program (lax.stage), compiled or loaded once per shape and dtype at every start (10
  # in a BERT; tests/README.md, "session 37").
  return model, jax.device_put(unflatten(params)), config


def from_config(name_or_path: str | os.PathLike, num_labels: int | None = None,
                seed: int = 0, **config_overrides: Any
                ) -> tuple[bert.BertForSequenceClassification, dict[str, Any], bert.BertConfig]:
  """A randomly initialised model with a checkpoint's architecture (+ overrides).

  Reads only ``config.json``; useful to train from scratch or to build a small model
  that shares a checkpoint's tokenizer (``from_config("minilm-l6", num_hidden_layers=2,
  hidden_size=32, ...)``).
  """
  directory = hub.resolve(name_or_path)
  if num_labels is not None:
    config_overrides["num_labels"] = num_labels
  try:
    config = bert.BertConfig.from_hf_dict(_read_config(directory), **config_overrides)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
  model = bert.BertForSequenceClassification(config)
  return model, bert.init_params(model, jax.random.key(seed)), config


def copy_tokenizer(name_or_path: str | os.PathLike, out_dir: Path) -> None:
  """Copies a checkpoint's tokenizer files into ``out_dir``."""
  src = hub.resolve(name_or_path)
  for name in _TOKENIZER_FILES:
    if (src / name).is_file():
      shutil.copy2(src / name, out_dir / name)


def export_hf(params: Any, config: bert.BertConfig, out_dir: str | os.PathLike,
              tokenizer_from: str | os.PathLike | None = None):
  """Writes params as an HF ``BertForSequenceClassification`` directory (local or gs://).

  Writes ``config.json`` and ``model.safetensors`` (float32 unless the params are
  another float dtype; metadata ``format=pt``), plus the tokenizer files of
  ``tokenizer_from`` (a name or directory) if given. Files are written to a temporary
  directory first and published when complete (``jaxprune.paths.staged_dir``), so a
  failed export leaves nothing half-written.

  Returns:
    The output directory.
  """
  from safetensors.numpy import save_file

  state = flax_to_hf(params)
  with paths.staged_dir(out_dir) as tmp:
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    if tokenizer_from is not None:
      copy_tokenizer(tokenizer_from, tmp)
  return paths.path(out_dir)
