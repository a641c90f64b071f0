"""GLUE's official metrics, accumulated over evaluation batches.

CoLA: Matthews correlation; STS-B: Pearson and Spearman correlation; MRPC and QQP: F1
(of class 1) and accuracy; the others: accuracy (``TaskSpec.metrics`` lists them, main
one first). Computed in numpy with the conventions of scikit-learn and scipy, which the
tests compare against; where those return NaN or warn on degenerate input (a constant
prediction), these return 0.0, so model selection by ``max`` stays well defined.

Rows with ``weight == 0`` (the padding of ``eval_batches``) are left out; the
accumulator keeps only per-example predictions and labels, so the result does not
depend on how the split was batched.

Example::

  acc = MetricAccumulator("MRPC")
  for batch in eval_batches(dev, 64):
    acc.add(predict(batch), batch["labels"], batch["weight"])   # logits (b, 2)
  acc.result()   # {"f1": 0.85, "accuracy": 0.78}
"""

from __future__ import annotations

import numpy as np

from jaxprune.data.tasks import TaskSpec
from jaxprune.data.tasks import get_task

__all__ = ["accuracy", "f1", "matthews_corrcoef", "pearson", "spearman",
           "compute_metrics", "constant_baseline", "MetricAccumulator"]


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of predictions equal to their label."""
  return float(np.mean(np.asarray(predictions) == np.asarray(labels))) if len(labels) else 0.0


def f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
  """F1 score of class ``positive``: 2 tp / (2 tp + fp + fn); 0.0 when that is 0/0."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  tp = np.sum((predictions == positive) & (labels == positive))
  fp_fn = np.sum((predictions != labels) & ((predictions == positive) | (labels == positive)))
  denominator = 2 * tp + fp_fn
  return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Matthews correlation (multi-class R_K form, as scikit-learn); 0.0 when undefined.

  MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)) with c the
  correct count, s the total, p_k / t_k the predicted / true counts of class k.
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes, inverse = np.unique(np.concatenate([predictions, labels]), return_inverse=True)
  p = np.bincount(inverse[:len(predictions)], minlength=len(classes)).astype(np.float64)
  t = np.bincount(inverse[len(predictions):], minlength=len(classes)).astype(np.float64)
  s = float(len(labels))
  c = float(np.sum(predictions == labels))
  denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
  return float((c * s - p @ t) / denominator) if denominator > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation; 0.0 when either side is constant (undefined)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return 0.0
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x @ x) * (y @ y))
  return float(np.clip(x @ y / denominator, -1.0, 1.0)) if denominator > 0 else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n, ties sharing their mean rank (``scipy.stats.rankdata`` "average")."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  mean_rank = (starts + ends + 1) / 2.0          # mean of ranks starts+1 .. ends
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (Pearson of average ranks); 0.0 when undefined."""
  return pearson(_rank(x), _rank(y))


_METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def _as_predictions(spec: TaskSpec, outputs: np.ndarray) -> np.ndarray:
  outputs = np.asarray(outputs)
  if spec.is_regression:
    if outputs.ndim == 2 and outputs.shape[1] == 1:
      outputs = outputs[:, 0]
    if outputs.ndim != 1:
      raise ValueError(f"{spec.name}: expected scores of shape (b,) or (b, 1), "
                       f"got {outputs.shape}")
    return outputs.astype(np.float64)
  if outputs.ndim == 2:
    if outputs.shape[1] != spec.num_labels:
      raise ValueError(f"{spec.name}: expected logits (b, {spec.num_labels}), "
                       f"got {outputs.shape}")
    return np.argmax(outputs, axis=-1)
  if outputs.ndim != 1 or outputs.dtype.kind not in "iu":
    raise ValueError(f"{spec.name}: expected logits (b, {spec.num_labels}) or integer "
                     f"class ids (b,), got {outputs.dtype} {outputs.shape}")
  return outputs


def compute_metrics(task: str | TaskSpec, outputs: np.ndarray,
                    labels: np.ndarray) -> dict[str, float]:
  """The task's official metrics of model outputs against labels.

  Args:
    task: a task name or spec.
    outputs: logits ``(n, num_labels)`` or class ids ``(n,)``; for regression scores
      ``(n,)`` or ``(n, 1)``.
    labels: ``(n,)`` class ids or scores.

  Returns:
    ``{metric: value}`` in ``TaskSpec.metrics`` order.
  """
  spec = get_task(task)
  predictions = _as_predictions(spec, outputs)
  labels = np.asarray(labels)
  if labels.shape != predictions.shape:
    raise ValueError(f"{spec.name}: {predictions.shape[0]} predictions, labels {labels.shape}")
  return {name: _METRICS[name](predictions, labels) for name in spec.metrics}


def constant_baseline(task: str | TaskSpec, train_labels: np.ndarray,
                      dev_labels: np.ndarray) -> dict[str, float]:
  """Official metrics of the best constant guess: the training set's majority class
  (the mean score for regression, whose correlations are then 0).

  A model within a point of this has learned nothing beyond the label prior.

  Example: ``constant_baseline("MRPC", train["labels"], dev["labels"])["accuracy"]``.
  """
  spec = get_task(task)
  train_labels, dev_labels = np.asarray(train_labels), np.asarray(dev_labels)
  if spec.is_regression:
    guess = np.full(dev_labels.shape, float(np.mean(train_labels)))
  else:
    counts = np.bincount(train_labels.astype(np.int64), minlength=spec.num_labels)
    guess = np.full(dev_labels.shape, int(np.argmax(counts)), np.int64)
  return compute_metrics(spec, guess, dev_labels)


class MetricAccumulator:
  """Collects predictions batch by batch and computes the task's metrics at the end.

  Only rows with ``weight > 0`` are kept, so eval padding never counts.
  """

  def __init__(self, task: str | TaskSpec):
    self.spec = get_task(task)
    self._predictions: list[np.ndarray] = []
    self._labels: list[np.ndarray] = []

  def add(self, outputs: np.ndarray, labels: np.ndarray,
          weight: np.ndarray | None = None) -> None:
    """Adds one batch: model outputs (see ``compute_metrics``), labels and weights."""
    predictions = _as_predictions(self.spec, outputs)
    labels = np.asarray(labels)
    keep = np.ones(len(labels), bool) if weight is None else np.asarray(weight) > 0
    if not predictions.shape == labels.shape == keep.shape:
      raise ValueError(f"{self.spec.name}: batch of {predictions.shape[0]} predictions, "
                       f"labels {labels.shape}, weight {keep.shape}")
    self._predictions.append(predictions[keep])
    self._labels.append(labels[keep])

  @property
  def count(self) -> int:
    """Number of (non-padding) examples added so far."""
    return sum(len(labels) for labels in self._labels)

  def result(self) -> dict[str, float]:
    """``{metric: value}`` over everything added, in ``TaskSpec.metrics`` order."""
    if not self._labels:
      raise ValueError(f"{self.spec.name}: no batches were added")
    predictions = np.concatenate(self._predictions)
    labels = np.concatenate(self._labels)
    return {name: _METRICS[name](predictions, labels) for name in self.spec.metrics}
