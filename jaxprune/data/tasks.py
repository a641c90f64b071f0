"""The GLUE task registry: columns, labels, metrics and file quirks of each task.

Every fact a reader, the batcher, the metrics or the augmenter needs about a task lives
in one frozen ``TaskSpec`` here, so that none of them branches on task names.

Names are looked up case-insensitively, ignoring ``-`` and ``_`` (``"sst2"``,
``"STS-B"``, ``"mnli"``); the diagnostic set is ``"AX"`` (alias ``"diagnostic"``).

Example::

  spec = get_task("mrpc")
  spec.labels          # ('0', '1')
  spec.metrics         # ('accuracy', 'f1')
  spec.dev_splits      # ('dev',)
  spec.filename("train")  # 'MRPC/train.tsv'
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from jaxprune.errors import DataError


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What is known about one GLUE task.

  Attributes:
    name: canonical name, also the folder name in a GLUE directory (``"SST-2"``).
    text_columns: header names of the one or two text columns, in model input order.
    label_column: header name of the label column in labelled files; ``None`` when
      the task has no labelled file (the diagnostic set).
    labels: label strings as written in the files, in class-index order; empty for a
      regression task. The order is the one of BERT's ``run_classifier.py`` processors
      (and so of teachers fine-tuned with it or with ``transformers``' ``run_glue``).
    label_range: ``(low, high)`` bounds of a regression target; ``None`` otherwise.
    metrics: official GLUE metrics, the first being the one to select models by.
    train_splits: splits with training data (``"train_aug"`` is the augmented copy
      written by ``jaxprune.data.augment``).
    dev_splits: labelled evaluation splits (MNLI has a matched and a mismatched one).
    test_splits: unlabelled test splits.
    directory: the task's folder under the GLUE directory.
    files: filename per split where it is not ``<split>.tsv``.
    headerless_splits: splits whose files have no header row.
    headerless_columns: the column names to use for those files.
    tfds_name: the ``tensorflow_datasets`` builder config (``glue/<tfds_name>``).
    tfds_text_features: the TFDS feature names matching ``text_columns``.
    tfds_labels: the label strings in TFDS class-index order (TFDS orders some
      tasks' classes differently, e.g. MNLI).
    augment_copies: TinyBERT's default number of augmented copies per example
      (``N``), or ``None`` where TinyBERT gives none.
  """

  name: str
  text_columns: tuple[str, ...]
  label_column: str | None
  labels: tuple[str, ...]
  metrics: tuple[str, ...]
  tfds_name: str
  tfds_text_features: tuple[str, ...]
  tfds_labels: tuple[str, ...] = ()
  label_range: tuple[float, float] | None = None
  train_splits: tuple[str, ...] = ("train", "train_aug")
  dev_splits: tuple[str, ...] = ("dev",)
  test_splits: tuple[str, ...] = ("test",)
  directory: str = ""
  files: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
  headerless_splits: tuple[str, ...] = ()
  headerless_columns: tuple[str, ...] = ()
  augment_copies: int | None = None

  def __post_init__(self):
    if not self.directory:
      object.__setattr__(self, "directory", self.name)
    object.__setattr__(self, "files", types.MappingProxyType(dict(self.files)))

  @property
  def is_regression(self) -> bool:
    """Whether the target is a real number (STS-B) rather than a class."""
    return not self.labels

  @property
  def num_labels(self) -> int:
    """Width of the model output: the number of classes, or 1 for regression."""
    return len(self.labels) or 1

  @property
  def is_pair(self) -> bool:
    """Whether an example is a pair of texts."""
    return len(self.text_columns) == 2

  @property
  def splits(self) -> tuple[str, ...]:
    """Every split name the task knows, in train, dev, test order."""
    return self.train_splits + self.dev_splits + self.test_splits

  def is_labelled(self, split: str) -> bool:
    """Whether ``split`` carries labels (every split but the test ones)."""
    self.check_split(split)
    return split not in self.test_splits

  def check_split(self, split: str) -> None:
    """Raises ``DataError`` naming the known splits if ``split`` is not one of them."""
    if split not in self.splits:
      raise DataError(
          f"task {self.name} has no split {split!r} (known: {', '.join(self.splits)})")

  def filename(self, split: str) -> str:
    """The split's file relative to the GLUE directory, e.g. ``"CoLA/train.tsv"``."""
    self.check_split(split)
    return f"{self.directory}/{self.files.get(split, split + '.tsv')}"


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("contradiction", "entailment", "neutral")

TASKS: Mapping[str, TaskSpec] = types.MappingProxyType({spec.name: spec for spec in (
    TaskSpec(
        name="CoLA",
        text_columns=("sentence",),
        label_column="label",
        labels=_BINARY,
        metrics=("mcc",),
        # train/dev: source code, label, original mark (usually empty), sentence.
        headerless_splits=("train", "train_aug", "dev"),
        headerless_columns=("source", "label", "mark", "sentence"),
        tfds_name="cola",
        tfds_text_features=("sentence",),
        tfds_labels=_BINARY,
        augment_copies=30,
    ),
    TaskSpec(
        name="SST-2",
        text_columns=("sentence",),
        label_column="label",
        labels=_BINARY,
        metrics=("accuracy",),
        tfds_name="sst2",
        tfds_text_features=("sentence",),
        tfds_labels=_BINARY,
        augment_copies=20,
    ),
    TaskSpec(
        name="MRPC",
        text_columns=("#1 String", "#2 String"),
        label_column="Quality",
        labels=_BINARY,
        metrics=("f1", "accuracy"),
        tfds_name="mrpc",
        tfds_text_features=("sentence1", "sentence2"),
        tfds_labels=_BINARY,
        augment_copies=30,
    ),
    TaskSpec(
        name="STS-B",
        text_columns=("sentence1", "sentence2"),
        label_column="score",
        labels=(),
        label_range=(0.0, 5.0),
        metrics=("pearson", "spearman"),
        tfds_name="stsb",
        tfds_text_features=("sentence1", "sentence2"),
        augment_copies=30,
    ),
    TaskSpec(
        name="QQP",
        text_columns=("question1", "question2"),
        label_column="is_duplicate",
        labels=_BINARY,
        metrics=("accuracy", "f1"),
        tfds_name="qqp",
        tfds_text_features=("question1", "question2"),
        tfds_labels=_BINARY,
        augment_copies=10,
    ),
    TaskSpec(
        name="MNLI",
        text_columns=("sentence1", "sentence2"),
        label_column="gold_label",
        labels=_MNLI,
        metrics=("accuracy",),
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        tfds_name="mnli",
        tfds_text_features=("premise", "hypothesis"),
        tfds_labels=("entailment", "neutral", "contradiction"),
        augment_copies=10,
    ),
    TaskSpec(
        name="QNLI",
        text_columns=("question", "sentence"),
        label_column="label",
        labels=_NLI2,
        metrics=("accuracy",),
        tfds_name="qnli",
        tfds_text_features=("question", "sentence"),
        tfds_labels=_NLI2,
        augment_copies=20,
    ),
    TaskSpec(
        name="RTE",
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        labels=_NLI2,
        metrics=("accuracy",),
        tfds_name="rte",
        tfds_text_features=("sentence1", "sentence2"),
        tfds_labels=_NLI2,
        augment_copies=30,
    ),
    TaskSpec(
        name="WNLI",
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        labels=_BINARY,
        metrics=("accuracy",),
        tfds_name="wnli",
        tfds_text_features=("sentence1", "sentence2"),
        tfds_labels=_BINARY,
    ),
    # The diagnostic set: unlabelled MNLI-style pairs, scored (by the GLUE server)
    # with the multi-class Matthews correlation (R3) of MNLI-model predictions.
    TaskSpec(
        name="AX",
        text_columns=("sentence1", "sentence2"),
        label_column=None,
        labels=_MNLI,
        metrics=("mcc",),
        train_splits=(),
        dev_splits=(),
        test_splits=("test",),
        directory="diagnostic",
        files={"test": "diagnostic.tsv"},
        tfds_name="ax",
        tfds_text_features=("premise", "hypothesis"),
        tfds_labels=("entailment", "neutral", "contradiction"),
    ),
)})

_ALIASES = {"diagnostic": "AX"}


def _key(name: str) -> str:
  return name.lower().replace("-", "").replace("_", "")


_LOOKUP = {_key(n): n for n in TASKS} | {_key(a): n for a, n in _ALIASES.items()}


def task_names() -> tuple[str, ...]:
  """The canonical names of the known tasks, in GLUE order."""
  return tuple(TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
  """Returns the ``TaskSpec`` of a task name (case, ``-`` and ``_`` ignored).

  Raises:
    DataError: for an unknown name, listing the known ones.
  """
  if isinstance(name, TaskSpec):
    return name
  canonical = _LOOKUP.get(_key(str(name)))
  if canonical is None:
    raise DataError(f"unknown GLUE task {name!r} (known: {', '.join(TASKS)}, diagnostic)")
  return TASKS[canonical]
