"""What a run leaves for people: metrics as JSON lines and TensorBoard events, a plot.

``MetricWriter`` appends one JSON object per call to ``<workdir>/metrics.jsonl`` and
mirrors scalars into TensorBoard event files under ``<workdir>/tb`` (when tensorboardX
is installed). ``plot_run`` draws the loss and each distillation term (smoothed),
sparsity and the dev metric over steps into a PNG. ``layer_sparsity`` and
``sparsity_summary`` describe masks and params; ``table`` formats the final summary.

Example::

  with MetricWriter(workdir) as w:
    w.write(step, {"loss": 0.3, "sparsity": 0.5}, kind="train")
  plot_run(workdir / "metrics.jsonl", workdir / "run.png")
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from jaxprune import paths

__all__ = ["LOSS_TERMS", "MetricWriter", "read_metrics", "plot_run", "smooth", "table",
           "layer_counts", "layer_sparsity", "sparsity_by_layer", "sparsity_summary", "baseline_warnings", "publish_run"]

# The loss terms a distillation step logs, in plotting order.
LOSS_TERMS = ("attention_loss", "hidden_loss", "prediction_loss", "labels_loss")
_LAYER = re.compile(r"encoder/layer/(\d+)/")


def _plain(value: Any) -> Any:
  """Python scalars for JSON (numpy/jax scalars -> float/int)."""
  if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _tensorboard_writer(logdir: Path):
  """tensorboardX's ``SummaryWriter``, imported without torch when torch is not loaded.

  tensorboardX imports torch whenever it is installed, only to accept torch tensors;
  the writer here gets Python floats. Hiding torch during that import spares every run
  about 1.5 s of start-up; torch itself stays importable afterwards.
  """
  hide = "torch" not in sys.modules and "tensorboardX" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter(str(logdir))


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` (one process writes) and TensorBoard.

  A ``gs://`` workdir is written through a local staging folder (GCS objects cannot be
  appended to): rows and events go there, and `flush` uploads them; a resumed run
  continues the file it finds there.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self._remote = paths.path(workdir) if paths.is_remote(workdir) else None
    local = Path(workdir)
    if self._remote is not None and enabled:
      local = Path(tempfile.mkdtemp(prefix="jaxprune-metrics-"))
      if (self._remote / "metrics.jsonl").is_file():
        (local / "metrics.jsonl").write_text((self._remote / "metrics.jsonl").read_text())
    self.path = local / "metrics.jsonl"
    self._tb = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
    if enabled and tensorboard:
      try:
        self._tb = _tensorboard_writer(local / "tb")
      except ImportError:
        pass

  def write(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "kind") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{kind}/{k}", v, int(step))

  def flush(self) -> None:
    """Makes what was written visible in the workdir (uploads it for ``gs://``)."""
    if self._tb is not None:
      self._tb.flush()
    if self._remote is not None and self.enabled:
      paths.upload(self.path.parent, self._remote)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    self.flush()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a ``metrics.jsonl`` (the last row per (kind, step) wins on resume)."""
  rows: dict[tuple[str, int], dict[str, Any]] = {}
  p = paths.path(path)
  if p.is_file():
    for line in p.read_text().splitlines():
      if line.strip():
        row = json.loads(line)
        rows[(row.get("kind", "train"), row["step"])] = row
  return sorted(rows.values(), key=lambda r: (r["step"], r.get("kind", "")))


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
  """Debiased exponential moving average (TensorBoard's smoothing)."""
  out, avg = [], 0.0
  for i, v in enumerate(values, start=1):
    avg = weight * avg + (1 - weight) * v
    out.append(avg / (1 - weight ** i))
  return out


def plot_run(metrics_path: str | os.PathLike, out_png: str | os.PathLike,
             metric: str | None = None, title: str = "") -> Path | None:
  """Plots the training loss with each distillation term (smoothed, so a swamped term
  shows at a glance), sparsity and the dev metric over steps; None without matplotlib."""
  try:  # a Figure of its own: pyplot's global backend and figures are left alone
    from matplotlib.figure import Figure
  except ImportError:
    return None
  rows = read_metrics(metrics_path)
  train = [r for r in rows if r.get("kind") == "train" and isinstance(r.get("loss"), float)]
  evals = [r for r in rows if r.get("kind") == "eval"]
  if metric is None and evals:
    metric = next((k for k in evals[-1] if k not in ("step", "kind", "loss")), None)
  fig = Figure(figsize=(13, 3.6))
  axes = fig.subplots(1, 3)
  steps = [r["step"] for r in train]
  for name in ("loss", *LOSS_TERMS):
    values = [r.get(name) for r in train]
    if train and all(isinstance(v, float) for v in values) and any(values):
      label = "total" if name == "loss" else name.removesuffix("_loss")
      axes[0].plot(steps, smooth(values), lw=2 if name == "loss" else 1.2, label=label)
  axes[0].set(title="training loss (EMA 0.9)", xlabel="step", yscale="log")
  if train and any(r.get(t) for r in train for t in LOSS_TERMS):
    axes[0].legend(fontsize=8)
  axes[1].plot(steps, [r.get("sparsity", 0.0) for r in train], lw=1.5)
  axes[1].set(title="encoder sparsity", xlabel="step", ylim=(0, 1))
  if metric:
    axes[2].plot([r["step"] for r in evals], [r.get(metric) for r in evals], "o-")
  axes[2].set(title=f"dev {metric or ''}", xlabel="step")
  for ax in axes:
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with paths.staged_file(out_png) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  return paths.path(out_png)


def publish_run(workdir: str | os.PathLike, summary: dict[str, Any], params: Any,
                model_config: Any, tokenizer_from: str, title: str = "",
                plot: bool = True) -> dict[str, Any]:
  """Writes what a finished run leaves in ``workdir`` (local or gs://), each file
  atomically: ``hf/`` (the selected model), ``model.sparse.safetensors`` (fp16,
  compressed), ``summary.json`` (with the two exports' sizes added) and, with ``plot``,
  ``run.png``."""
  from jaxprune import export
  from jaxprune import models

  workdir = paths.path(workdir)
  hf = models.export_hf(params, model_config, workdir / "hf", tokenizer_from=tokenizer_from)
  summary["hf_export_bytes"] = paths.tree_bytes(hf)
  summary["sparse_fp16_export_bytes"] = export.export_sparse(
      params, None, workdir / "model.sparse.safetensors", "float16", config=model_config,
      dense_dtype="float16").file_bytes
  paths.write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  if plot:
    plot_run(workdir / "metrics.jsonl", workdir / "run.png", title=title)
  return summary


def layer_counts(opt_state: Any, where: Any) -> tuple[dict[str, Any], dict[str, int]]:
  """Nonzero entries (device scalars) and sizes per encoder layer of the pruning masks.

  The counting runs where the masks live (one small jitted reduction; the counts come
  back replicated), so it neither waits for the device nor needs the masks on one host:
  it works when the ``model`` axis spans hosts. `sparsity_by_layer` turns the fetched
  counts into fractions; `layer_sparsity` does both at once.
  """
  import jax  # imported when masks are described, so that this module stays light

  from jaxprune import masks as masks_lib
  from jaxprune import transforms

  masks = transforms.find_masks(opt_state)
  flat = jax.tree_util.tree_flatten_with_path(masks)[0]
  flags = (jax.tree.leaves(masks_lib.prunable_tree(masks, where)) if where is not None
           else [True] * len(flat))
  groups: dict[str, list[Any]] = {}
  for (path, leaf), flag in zip(flat, flags):
    if flag:
      m = _LAYER.search(masks_lib.path_str(path))
      groups.setdefault(f"layer_{m[1]}" if m else "other", []).append(leaf)
  sizes = {k: sum(int(leaf.size) for leaf in v) for k, v in groups.items()}
  return _count_nonzero()(groups), sizes


@functools.cache
def _count_nonzero() -> Any:
  """One jitted reduction (compiled once per mask-tree structure)."""
  import jax
  import jax.numpy as jnp

  return jax.jit(lambda groups: {k: sum(jnp.count_nonzero(x).astype(jnp.int32) for x in v)
                                 for k, v in groups.items()})


def sparsity_by_layer(nonzero: dict[str, Any], sizes: dict[str, int]) -> dict[str, float]:
  """``{layer_<i>: sparsity, ..., total: sparsity}`` from `layer_counts`' fetched output."""
  out = {k: 1.0 - int(nonzero[k]) / sizes[k] for k in sorted(sizes)}
  total = sum(sizes.values())
  out["total"] = 1.0 - sum(int(v) for v in nonzero.values()) / total if total else 0.0
  return out


def layer_sparsity(opt_state: Any, where: Any) -> dict[str, float]:
  """Sparsity per encoder layer (``layer_<i>``) and in ``total`` of the pruning masks in
  an optimizer state (any state `transforms.find_masks` reads), on any mesh.

  Example: ``layer_sparsity(state.opt_state, "bert_encoder")["total"]`` is ``0.9`` at the
  end of a 90% run.
  """
  import jax

  nonzero, sizes = layer_counts(opt_state, where)
  return sparsity_by_layer(jax.device_get(nonzero), sizes)


def sparsity_summary(params: Any) -> dict[str, Any]:
  """Counts of a BERT's params: all and nonzero, and the encoder matrices' sparsity."""
  from jaxprune import masks as masks_lib

  every = masks_lib.sparsity_report(params)
  encoder = masks_lib.sparsity_report(params, masks_lib.BERT_ENCODER_MATRICES)
  return {"params": every.size, "nonzero_params": every.nonzero,
          "encoder_sparsity": encoder.sparsity, "encoder_nonzero": encoder.nonzero,
          "encoder_size": encoder.size}


def baseline_warnings(scores: dict[str, float],
                      baseline: dict[str, float] | None) -> list[str]:
  """A warning when the main (first) metric is within one point of the constant
  (majority-class) baseline: the model learned little beyond the label prior."""
  if not baseline:
    return []
  name = next(iter(scores))
  if scores[name] - baseline[name] < 0.01:
    return [f"dev {name} {100 * scores[name]:.2f} is within one point of the majority/"
            f"constant baseline ({100 * baseline[name]:.2f}): the model learned little "
            "beyond the label prior"]
  return []


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A plain-text table with aligned columns."""
  cells = [[str(h) for h in header]] + [
      [f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
