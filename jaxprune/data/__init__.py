"""GLUE data for jaxprune: task registry, readers, static-shape batches, metrics, augmentation.

Example::

  from jaxprune import data
  from jaxprune.models import load_tokenizer

  train = data.read_tsv("../shared/data/glue", "MRPC", "train")
  arrays = data.encode(train, load_tokenizer("minilm-l6"), max_seq_len=128)
  for batch, state in data.train_batches(arrays, 32, seed=42, num_epochs=1):
    ...

``augment_task`` and the other names of ``jaxprune.data.augment`` are imported on first
use (they need safetensors, tqdm and the tokenizer stack).
"""

import importlib

from jaxprune.data.batching import IteratorState
from jaxprune.data.batching import encode
from jaxprune.data.batching import epoch_permutation
from jaxprune.data.batching import eval_batches
from jaxprune.data.batching import num_eval_batches
from jaxprune.data.batching import steps_per_epoch
from jaxprune.data.batching import train_batches
from jaxprune.data.batching import trim_padding
from jaxprune.data.loading import augmented_dir
from jaxprune.data.loading import ensure_augmented
from jaxprune.data.loading import glue_dir
from jaxprune.data.loading import load_dev
from jaxprune.data.loading import load_splits
from jaxprune.data.loading import load_train
from jaxprune.data.loading import read_split
from jaxprune.data.metrics import MetricAccumulator
from jaxprune.data.metrics import compute_metrics
from jaxprune.data.metrics import constant_baseline
from jaxprune.data.readers import Example
from jaxprune.data.readers import Examples
from jaxprune.data.readers import TsvTable
from jaxprune.data.readers import read_table
from jaxprune.data.readers import read_tfds
from jaxprune.data.readers import read_tsv
from jaxprune.data.tasks import TASKS
from jaxprune.data.tasks import DataError
from jaxprune.data.tasks import TaskSpec
from jaxprune.data.tasks import get_task
from jaxprune.data.tasks import task_names

_LAZY = {
    "AugmentResult": "jaxprune.data.augment",
    "augment_main": "jaxprune.data.augment",
    "augment_task": "jaxprune.data.augment",
    "word_candidates": "jaxprune.data.augment",
}

__all__ = [
    "AugmentResult",
    "DataError",
    "Example",
    "Examples",
    "IteratorState",
    "MetricAccumulator",
    "TASKS",
    "TaskSpec",
    "TsvTable",
    "augment_main",
    "augment_task",
    "augmented_dir",
    "compute_metrics",
    "constant_baseline",
    "encode",
    "ensure_augmented",
    "epoch_permutation",
    "eval_batches",
    "get_task",
    "glue_dir",
    "load_dev",
    "load_splits",
    "load_train",
    "num_eval_batches",
    "read_table",
    "read_tfds",
    "read_split",
    "read_tsv",
    "steps_per_epoch",
    "task_names",
    "train_batches",
    "trim_padding",
    "word_candidates",
]


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
