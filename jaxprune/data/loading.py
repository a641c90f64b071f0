"""A run's GLUE data from its config: where the files are, the tokenized splits and the
augmented training split (created on first use).

The trainer and the CLI call these; the readers (``readers.py``) and batching
(``batching.py``) below them know nothing about configs.

Example::

  spec = get_task(config.task)
  train = load_train(config, spec, tokenizer)
  dev = load_dev(config, spec, tokenizer)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune import paths
from jaxprune.data import batching
from jaxprune.data.batching import trim_padding  # noqa: F401  (re-exported)
from jaxprune.data import readers
from jaxprune.data.tasks import DataError
from jaxprune.data.tasks import TaskSpec
from jaxprune.data.tasks import get_task

__all__ = ["glue_dir", "read_split", "load_train", "load_dev", "load_splits",
           "augmented_dir", "ensure_augmented", "trim_padding"]

DEFAULT_GLUE_DIR = "../shared/data/glue"
_STAMP = "augment.json"


def glue_dir(config: Any) -> Path:
  """The GLUE folder: config.glue_dir, else $JAXPRUNE_GLUE_DIR, else ../shared/data/glue.

  A ``gs://`` folder's ``<TASK>/`` files are downloaded (``jaxprune.paths.local_copy``)
  and the local copy's parent is returned.
  """
  name = config.glue_dir or os.environ.get("JAXPRUNE_GLUE_DIR", DEFAULT_GLUE_DIR)
  if paths.is_remote(name) and config.data_source == "tsv":
    task = f"{str(name).rstrip('/')}/{get_task(config.task).name}"
    if not paths.is_dir(task):
      raise DataError(f"{task}: no such folder (expected the GLUE files of {config.task})")
    return paths.local_copy(task).parent
  path = Path(name)
  if config.data_source == "tsv" and not path.is_dir():
    raise DataError(
        f"{path}: no GLUE folder (expected <TASK>/train.tsv, dev.tsv as written by the GLUE "
        "download script; set --config.glue_dir or $JAXPRUNE_GLUE_DIR, or use "
        "--config.data_source=tfds)")
  return path


def read_split(config: Any, spec: TaskSpec, split: str,
               aug_dir: str | os.PathLike | None = None) -> readers.Examples:
  """One split, from TFDS or the TSV files (``train_aug`` from ``aug_dir``)."""
  if split == "train_aug" and (aug_dir or config.aug_dir):
    folder = str(aug_dir or config.aug_dir)
    if paths.is_remote(folder):
      folder = paths.local_copy(f"{folder.rstrip('/')}/{spec.name}").parent
    return readers.read_tsv(folder, spec, split)
  if config.data_source == "tfds":
    return readers.read_tfds(spec, split)
  return readers.read_tsv(glue_dir(config), spec, split)


def load_dev(config: Any, spec: TaskSpec, tokenizer: Any) -> dict[str, np.ndarray]:
  """The tokenized first dev split (optionally only its first ``dev_subsample`` rows)."""
  dev = read_split(config, spec, spec.dev_splits[0])
  if 0 < config.dev_subsample < len(dev):
    dev = dev.select(np.arange(config.dev_subsample))
  return batching.encode(dev, tokenizer, config.max_seq_len)


def load_train(config: Any, spec: TaskSpec, tokenizer: Any, split: str | None = None,
               aug_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """The tokenized training split (``config.train_split`` by default), optionally a
  seeded subsample of ``config.train_subsample`` examples."""
  examples = read_split(config, spec, split or config.train_split, aug_dir)
  if 0 < config.train_subsample < len(examples):
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.choice(len(examples), config.train_subsample, replace=False))
    examples = examples.select(keep)
  return batching.encode(examples, tokenizer, config.max_seq_len)


def load_splits(config: Any, spec: TaskSpec, tokenizer: Any, workdir: str | os.PathLike, *,
                augment: bool = False, model: str = "minilm-l6", progress: bool = True
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A run's tokenized (train, dev) splits. With ``augment`` and ``config.augment_copies``
  (a student run) it trains on the augmented split, created on first use by process 0
  while the other processes wait (`ensure_augmented`)."""
  split, aug_dir = config.train_split, None
  if augment and config.augment_copies > 0:
    import jax  # only to agree between processes

    if jax.process_index() == 0:
      ensure_augmented(config, spec, workdir, model, progress=progress)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("jaxprune augmented data")
    split, aug_dir = "train_aug", augmented_dir(config, workdir)
  return (load_train(config, spec, tokenizer, split=split, aug_dir=aug_dir),
          load_dev(config, spec, tokenizer))


def augmented_dir(config: Any, workdir: str | os.PathLike):
  """Where a run's augmented split lives: ``config.aug_dir`` or ``<workdir>/augmented``."""
  return paths.path(config.aug_dir or f"{str(workdir).rstrip('/')}/augmented")


def ensure_augmented(config: Any, spec: TaskSpec, workdir: str | os.PathLike,
                     model: str, progress: bool = True) -> Path:
  """The folder holding ``<TASK>/train_aug.tsv`` with ``config.augment_copies`` draws per
  text; written there on first use (or when its settings changed), reused afterwards.

  The folder is ``config.aug_dir``, or ``<workdir>/augmented``. A small
  ``augment.json`` beside the file records the settings it was made with.
  """
  from jaxprune.data import augment  # tokenizer stack: imported only when augmenting

  out = augmented_dir(config, workdir)
  settings = {"copies": int(config.augment_copies), "seed": int(config.seed), "model": model,
              "source": config.data_source}
  stamp = out / spec.name / _STAMP
  if (out / spec.filename("train_aug")).is_file() and stamp.is_file():
    if json.loads(stamp.read_text()) == settings:
      return out
  # The file and its stamp appear together, or not at all.
  with paths.staged_dir(out / spec.name) as tmp, tempfile.TemporaryDirectory() as scratch:
    augment.augment_task(glue_dir(config), spec, scratch, model=model,
                         copies=settings["copies"], seed=settings["seed"], progress=progress)
    shutil.move(Path(scratch) / spec.filename("train_aug"), tmp / "train_aug.tsv")
    (tmp / _STAMP).write_text(json.dumps(settings) + "\n")
  return out
