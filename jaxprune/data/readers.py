"""Reading GLUE splits into one in-memory format: local TSV files or TFDS ``glue/<task>``.

Both readers return ``Examples``: one split of one task held column-wise (the texts as
tuples of strings, the labels as one numpy array), which is what the batched tokenizer
in ``jaxprune.data.batching`` wants. Labels are class indices into ``TaskSpec.labels``
(int32, ``-1`` in unlabelled test splits) or, for STS-B, float32 scores (NaN when
unlabelled).

The TSV reader follows the official files' quirks (see ``tasks.TaskSpec``): CoLA
train/dev have no header, MRPC train/dev start with a UTF-8 BOM, and fields are split on
tabs with no quoting (some fields begin with a lone ``"``). Anything malformed raises
``DataError`` with ``file:line: what was expected``.

Example::

  dev = read_tsv("../shared/data/glue", "MRPC", "dev")
  len(dev), dev[0].text_a, dev.labels[:4]   # 408, "He said the foodservice ...", [1 0 0 1]
  read_tfds("mrpc", "dev")                  # the same format, from tensorflow_datasets
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxprune.data.tasks import DataError
from jaxprune.data.tasks import TaskSpec
from jaxprune.data.tasks import get_task

__all__ = ["Example", "Examples", "TsvTable", "read_table", "read_tsv", "read_tfds"]


class Example(NamedTuple):
  """One example; ``label`` is a class index (-1: none) or a float score (NaN: none)."""
  text_a: str
  text_b: str | None
  label: int | float
  idx: int


@dataclasses.dataclass(frozen=True)
class Examples:
  """One split of a GLUE task, column-wise.

  Attributes:
    task: canonical task name (``"MRPC"``).
    split: split name (``"dev"``).
    text_a: first text of every example.
    text_b: second text of every example, or ``None`` for single-sentence tasks.
    labels: ``(n,)`` int32 class indices (-1 when unlabelled) or float32 scores
      (NaN when unlabelled) for regression.
    idx: ``(n,)`` int64 position of each example in its source (data-row number in
      the TSV file, ``idx`` feature in TFDS).
    source: where the examples came from (a path, or ``tfds:glue/<name>[split]``).
  """

  task: str
  split: str
  text_a: tuple[str, ...]
  text_b: tuple[str, ...] | None
  labels: np.ndarray
  idx: np.ndarray
  source: str = ""

  def __post_init__(self):
    n = len(self.text_a)
    if self.text_b is not None and len(self.text_b) != n:
      raise ValueError(f"text_b has {len(self.text_b)} entries, text_a {n}")
    if self.labels.shape != (n,) or self.idx.shape != (n,):
      raise ValueError(f"labels {self.labels.shape} and idx {self.idx.shape} must be ({n},)")

  def __len__(self) -> int:
    return len(self.text_a)

  def __getitem__(self, i: int) -> Example:
    label = self.labels[i]
    return Example(self.text_a[i], None if self.text_b is None else self.text_b[i],
                   label.item(), int(self.idx[i]))

  @property
  def spec(self) -> TaskSpec:
    return get_task(self.task)

  @property
  def has_labels(self) -> bool:
    """Whether every example carries a label."""
    if self.labels.dtype.kind == "f":
      return bool(np.all(~np.isnan(self.labels)))
    return bool(np.all(self.labels >= 0))

  def select(self, indices: Sequence[int] | np.ndarray) -> Examples:
    """The examples at ``indices`` (a slice of a large split, e.g. ``range(1000)``)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return dataclasses.replace(
        self,
        text_a=tuple(self.text_a[i] for i in indices),
        text_b=None if self.text_b is None else tuple(self.text_b[i] for i in indices),
        labels=self.labels[indices],
        idx=self.idx[indices])


def _unlabelled(spec: TaskSpec, n: int) -> np.ndarray:
  if spec.is_regression:
    return np.full((n,), np.nan, np.float32)
  return np.full((n,), -1, np.int32)


# --------------------------------------------------------------------------- TSV


class TsvTable(NamedTuple):
  """The raw rows of one GLUE TSV file, every row checked to have ``len(columns)`` fields.

  Attributes:
    path: the file.
    columns: column names: the header row, or ``TaskSpec.headerless_columns``.
    has_header: whether the file starts with a header row (written back as is).
    rows: the data rows, as lists of fields.
  """
  path: Path
  columns: tuple[str, ...]
  has_header: bool
  rows: list[list[str]]

  def line(self, row: int) -> int:
    """The 1-based line number of data row ``row`` in the file."""
    return row + 1 + int(self.has_header)


def _split_lines(path: Path) -> list[str]:
  data = path.read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
  lines = text.split("\n")
  if lines and not lines[-1]:
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_table(glue_dir: str | os.PathLike, task: str | TaskSpec, split: str) -> TsvTable:
  """Reads the raw rows of a task's split file under ``glue_dir`` (the GLUE layout).

  Used by ``read_tsv`` and by the augmenter, which writes rows back in the same layout.

  Raises:
    DataError: a missing directory or file, an empty file, a header without data, or
      a row whose number of fields differs from the header's.
  """
  spec = get_task(task)
  path = Path(glue_dir) / spec.filename(split)
  if not Path(glue_dir).is_dir():
    raise DataError(f"{glue_dir}: GLUE directory does not exist "
                    f"(expected the layout <glue_dir>/{spec.filename(split)})")
  if not path.parent.is_dir():
    raise DataError(f"{path.parent}: no such directory (task {spec.name}; expected "
                    f"<glue_dir>/{spec.filename(split)})")
  if not path.is_file():
    present = sorted(p.name for p in path.parent.glob("*.tsv"))
    raise DataError(f"{path}: no such file (task {spec.name}, split {split}; "
                    f"present: {', '.join(present) or 'none'})")
  lines = _split_lines(path)
  has_header = split not in spec.headerless_splits
  if not lines:
    what = ("a header line, then rows" if has_header
            else f"rows of {len(spec.headerless_columns)} tab-separated columns "
            f"({', '.join(spec.headerless_columns)})")
    raise DataError(f"{path}: empty file (expected {what})")
  if has_header:
    columns = tuple(lines[0].split("\t"))
    lines = lines[1:]
    if not lines:
      raise DataError(f"{path}: no data rows after the header line")
  else:
    columns = spec.headerless_columns
  rows = [line.split("\t") for line in lines]
  table = TsvTable(path, columns, has_header, rows)
  width = len(columns)
  for i, row in enumerate(rows):
    if len(row) != width:
      raise DataError(f"{path}:{table.line(i)}: expected {width} tab-separated columns "
                      f"({', '.join(columns)}), got {len(row)}")
  return table


def _column(table: TsvTable, name: str, needed: Sequence[str]) -> int:
  try:
    return table.columns.index(name)
  except ValueError:
    raise DataError(f"{table.path}:1: header has no column {name!r} (expected one with "
                    f"{', '.join(needed)}; got {', '.join(table.columns)})") from None


def _parse_labels(spec: TaskSpec, table: TsvTable, col: int) -> np.ndarray:
  raw = [row[col] for row in table.rows]
  if not spec.is_regression:
    index = {label: i for i, label in enumerate(spec.labels)}
    labels = [index.get(r, -1) for r in raw]
    if -1 in labels:
      i = labels.index(-1)
      raise DataError(f"{table.path}:{table.line(i)}: label {raw[i]!r} is not one of "
                      f"{', '.join(spec.labels)}")
    return np.asarray(labels, np.int32)
  low, high = spec.label_range
  scores = []
  for i, r in enumerate(raw):
    try:
      x = float(r)
    except ValueError:
      x = math.nan
    if not low <= x <= high:
      raise DataError(f"{table.path}:{table.line(i)}: {table.columns[col]} {r!r} is not "
                      f"a number in [{low}, {high}]")
    scores.append(x)
  return np.asarray(scores, np.float32)


def read_tsv(glue_dir: str | os.PathLike, task: str | TaskSpec, split: str) -> Examples:
  """Reads one split of a GLUE task from ``<glue_dir>/<TASK>/<split>.tsv``.

  Args:
    glue_dir: the folder holding ``CoLA/``, ``MRPC/``... (the ``glue_data`` layout);
      ``train_aug`` is read from wherever ``augment_task`` wrote it.
    task: a task name or spec.
    split: one of ``get_task(task).splits``.

  Returns:
    ``Examples``; test splits come back unlabelled.

  Raises:
    DataError: naming file and line, for missing files, malformed rows, labels outside
      the task's label set and unknown task or split names.
  """
  spec = get_task(task)
  table = read_table(glue_dir, spec, split)
  needed = list(spec.text_columns)
  labelled = spec.is_labelled(split)
  if labelled:
    needed.append(spec.label_column)
  cols = [_column(table, name, needed) for name in needed]
  text_a = tuple(row[cols[0]] for row in table.rows)
  text_b = tuple(row[cols[1]] for row in table.rows) if spec.is_pair else None
  n = len(table.rows)
  labels = _parse_labels(spec, table, cols[-1]) if labelled else _unlabelled(spec, n)
  return Examples(spec.name, split, text_a, text_b, labels, np.arange(n, dtype=np.int64),
                  source=str(table.path))


# --------------------------------------------------------------------------- TFDS

_TFDS_SPLITS = {"dev": "validation", "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched"}


def _import_tfds():
  try:
    tfds = importlib.import_module("tensorflow_datasets")
  except ImportError:
    raise DataError("reading GLUE from TFDS needs tensorflow-datasets: "
                    "pip install 'jaxprune[tfds]'") from None
  # Registers the glue builder; without TensorFlow it is not imported by default.
  importlib.import_module("tensorflow_datasets.text.glue")
  return tfds


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return _text(value.item())
  return str(value)


def read_tfds(task: str | TaskSpec, split: str, *, data_dir: str | os.PathLike | None = None,
              download: bool = True) -> Examples:
  """Reads one split of a GLUE task with ``tfds.data_source("glue/<task>")``.

  Needs the ``tfds`` extra (tensorflow-datasets) but not TensorFlow. TFDS class
  indices are mapped onto ``TaskSpec.labels`` (TFDS orders MNLI's classes
  differently); the ``dev`` splits are TFDS's ``validation`` ones.

  Args:
    task: a task name or spec.
    split: one of the task's splits except ``train_aug``.
    data_dir: TFDS data directory; TFDS's default when ``None``.
    download: let TFDS download and prepare the data if it is not there.

  Returns:
    ``Examples`` in TFDS order (``idx`` holds TFDS's ``idx`` feature).
  """
  spec = get_task(task)
  spec.check_split(split)
  if split == "train_aug":
    raise DataError("split 'train_aug' exists only as TSV (written by jaxprune.data.augment)")
  tfds = _import_tfds()
  name = f"glue/{spec.tfds_name}"
  tfds_split = _TFDS_SPLITS.get(split, split)
  source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=download)
  n = len(source)
  rows = [source[i] for i in range(n)]
  where = f"tfds:{name}[{tfds_split}]"
  text_a = tuple(_text(r[spec.tfds_text_features[0]]) for r in rows)
  text_b = (tuple(_text(r[spec.tfds_text_features[1]]) for r in rows)
            if spec.is_pair else None)
  idx = np.asarray([int(r["idx"]) for r in rows], np.int64)
  if not spec.is_labelled(split):
    labels = _unlabelled(spec, n)
  elif spec.is_regression:
    labels = np.asarray([float(r["label"]) for r in rows], np.float32)
  else:
    to_ours = np.asarray([spec.labels.index(name) for name in spec.tfds_labels], np.int32)
    raw = np.asarray([int(r["label"]) for r in rows], np.int64)
    bad = np.flatnonzero((raw < 0) | (raw >= len(to_ours)))
    if bad.size:
      raise DataError(f"{where} example {bad[0]}: label {raw[bad[0]]} is not a class "
                      f"index below {len(to_ours)}")
    labels = to_ours[raw] if n else np.zeros((0,), np.int32)
  return Examples(spec.name, split, text_a, text_b, labels, idx, source=where)
