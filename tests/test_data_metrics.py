"""GLUE metrics against scikit-learn and scipy, and their accumulation over padded batches."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from jaxprune.data import MetricAccumulator
from jaxprune.data import compute_metrics
from jaxprune.data import eval_batches
from jaxprune.data import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")



@settings(max_examples=80, deadline=None)
@given(data=st.data(), num_classes=st.sampled_from([2, 3]))
def test_classification_metrics_match_sklearn(data, num_classes):
  n = data.draw(st.integers(1, 60))
  classes = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
  labels, preds = np.asarray(data.draw(classes)), np.asarray(data.draw(classes))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")       # sklearn warns where it returns 0.0 by convention
    want_mcc = sklearn_metrics.matthews_corrcoef(labels, preds)
    if num_classes == 2:
      want_f1 = sklearn_metrics.f1_score(labels, preds, zero_division=0.0)
      assert metrics.f1(preds, labels) == pytest.approx(want_f1)
  want_accuracy = sklearn_metrics.accuracy_score(labels, preds)
  assert metrics.accuracy(preds, labels) == pytest.approx(want_accuracy)
  assert metrics.matthews_corrcoef(preds, labels) == pytest.approx(want_mcc, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 10), st.floats(0, 5, width=32)), min_size=3,
                      max_size=60))
def test_correlations_match_scipy(pairs):
  x = np.asarray([p[0] / 2 for p in pairs])       # many ties, like STS-B's scores
  y = np.asarray([p[1] for p in pairs], np.float32)
  if np.ptp(x) == 0 or np.ptp(y) == 0:
    assert metrics.pearson(x, y) == 0.0 and metrics.spearman(x, y) == 0.0
    return
  assert metrics.pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-9)
  assert metrics.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)


def test_degenerate_cases_are_zero_not_nan():
  ones = np.ones(5, np.int64)
  assert metrics.matthews_corrcoef(ones, ones) == 0.0
  assert metrics.f1(np.zeros(4, np.int64), np.zeros(4, np.int64)) == 0.0
  assert metrics.pearson(np.ones(4), np.arange(4.0)) == 0.0
  assert metrics.pearson(np.ones(1), np.ones(1)) == 0.0


def test_compute_metrics_takes_logits_or_ids():
  labels = np.array([1, 0, 1, 1, 0])
  logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [0.0, 1.0], [0.0, 1.0]])
  preds = logits.argmax(1)
  got = compute_metrics("MRPC", logits, labels)
  assert list(got) == ["f1", "accuracy"]
  assert got == compute_metrics("MRPC", preds, labels)
  assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
  assert got["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, preds))
  assert list(compute_metrics("cola", preds, labels)) == ["mcc"]
  scores = np.array([[0.5], [4.0], [2.5]])
  got = compute_metrics("STS-B", scores, np.array([1.0, 3.0, 3.5], np.float32))
  assert list(got) == ["pearson", "spearman"] and got["spearman"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match=r"expected logits \(b, 3\)"):
    compute_metrics("MNLI", logits, labels)


def _padded_run(task, outputs, labels, batch_size):
  """Feeds (outputs, labels) through eval_batches' padding into an accumulator."""
  data = {"outputs": outputs, "labels": labels}
  acc = MetricAccumulator(task)
  for batch in eval_batches(data, batch_size):
    acc.add(batch["outputs"], batch["labels"], batch["weight"])
  return acc


@pytest.mark.parametrize("batch_size", [1, 7, 64, 500])
def test_accumulator_excludes_padding_and_ignores_batching(batch_size):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 203)
  logits = rng.normal(size=(203, 2)) + np.eye(2)[labels]
  # Padding rows repeat example 0; make it a wrong prediction so counting it would show.
  logits[0] = [5.0, -5.0] if labels[0] == 1 else [-5.0, 5.0]
  acc = _padded_run("QQP", logits, labels, batch_size)
  assert acc.count == 203
  preds = logits.argmax(1)
  assert acc.result() == pytest.approx({
      "accuracy": sklearn_metrics.accuracy_score(labels, preds),
      "f1": sklearn_metrics.f1_score(labels, preds)})


def test_accumulator_regression_and_mcc():
  rng = np.random.default_rng(1)
  scores = rng.uniform(0, 5, 101).astype(np.float32)
  outputs = (scores + rng.normal(0, 1, 101)).astype(np.float32)[:, None]
  got = _padded_run("STS-B", outputs, scores, 16).result()
  assert got["pearson"] == pytest.approx(scipy_stats.pearsonr(outputs[:, 0], scores)[0], abs=1e-6)
  assert got["spearman"] == pytest.approx(scipy_stats.spearmanr(outputs[:, 0], scores)[0],
                                          abs=1e-6)
  labels = rng.integers(0, 2, 55)
  preds = np.where(rng.random(55) < 0.7, labels, 1 - labels)
  got = _padded_run("CoLA", preds, labels, 8).result()
  assert got["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, preds))


def test_accumulator_errors():
  acc = MetricAccumulator("RTE")
  with pytest.raises(ValueError, match="no batches were added"):
    acc.result()
  with pytest.raises(ValueError, match="batch of 2 predictions, labels"):
    acc.add(np.zeros((2, 2)), np.zeros(3, np.int64), np.ones(3))


def test_constant_baseline_is_the_training_majority_on_dev():
  from jaxprune.data import constant_baseline
  # MRPC: majority class 1 in train; on dev (2 of 3 positive) acc 2/3, F1 2*2/(2*2+1) = 0.8.
  scores = constant_baseline("MRPC", np.array([1, 1, 0]), np.array([1, 0, 1]))
  assert scores == pytest.approx({"f1": 0.8, "accuracy": 2 / 3})
  # CoLA: a constant has MCC 0; STS-B: a constant has correlation 0.
  assert constant_baseline("CoLA", np.array([0, 1, 1]), np.array([1, 0]))["mcc"] == 0.0
  stsb = constant_baseline("STS-B", np.array([1.0, 3.0]), np.array([0.5, 4.0]))
  assert stsb == {"pearson": 0.0, "spearman": 0.0}


def test_report_plots_each_term_and_warns_near_the_baseline(tmp_path):
  from jaxprune import report
  assert report.smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # debiased
  assert report.smooth([0.0, 1.0], weight=0.5) == pytest.approx([0.0, 2 / 3])
  with report.MetricWriter(tmp_path) as w:
    for step in range(1, 30):
      w.write(step, {"loss": 9.0, "attention_loss": 8.0, "hidden_loss": 0.9,
                     "prediction_loss": 0.1, "sparsity": step / 30})
    w.write(29, {"accuracy": 0.7}, kind="eval")
  pytest.importorskip("matplotlib")
  assert report.plot_run(tmp_path / "metrics.jsonl", tmp_path / "run.png").stat().st_size
  near = report.baseline_warnings({"f1": 0.815, "accuracy": 0.7}, {"f1": 0.812, "accuracy": 0.68})
  assert len(near) == 1 and "f1 81.50" in near[0] and "(81.20)" in near[0]
  assert report.baseline_warnings({"f1": 0.85}, {"f1": 0.812}) == []
