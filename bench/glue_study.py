"""The comparison study: SparseBERT against its baselines and ablations on small GLUE tasks.

Run (each cell is its own resumable work directory: interrupt and re-run, finished
cells are skipped; cells run one at a time, in-process, through the trainer):

  python bench/glue_study.py --root runs/study                 # the whole grid
  python bench/glue_study.py --root runs/study --tasks rte,mrpc --methods sparsebert
  python bench/glue_study.py --root runs/study --report docs/results.md   # tables + plots

The grid (``grid``): per task a teacher (``configs/minilm_glue.py``'s finetune), then
cells of (task, method, sparsity, seed):

* ``sparsebert``: prune the pre-trained model while distilling the teacher (the paper);
* ``magnitude``: magnitude-prune the fine-tuned teacher on gold labels, no KD (the
  paper's baseline; ``method=prune_labels`` from ``<teacher>/hf``);
* ``sparsebert_from_teacher``: SparseBERT starting from the fine-tuned teacher (the
  paper's "knowledge lost" ablation);
* ``small_dense``: a dense student cut from the pre-trained model (``models.shrink``)
  with about as many encoder weights as the sparse one keeps, distilled the same way;
* ``no_attention``, ``no_hidden``, ``prediction_only``: SparseBERT without those KD terms.

Sparsities 0.9 and 0.95; the ablations and ``sparsebert_from_teacher`` on RTE and MRPC
at 0.9 only; seeds 0-2 for ``sparsebert`` and ``small_dense`` at 0.9 on RTE and MRPC.
Results go to ``--results`` (JSON, one row per finished cell, rewritten after each cell).
``--smoke`` runs a 3-cell grid on ``configs/tiny.py`` (what the test runs). Runtime: 5-20
minutes per MiniLM cell on a 2-core CPU (about 35 cells); never run it next to a speed
benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("RTE", "MRPC", "STS-B", "CoLA", "SST-2")
SST2_SUBSAMPLE = 8000  # seeded subsample of SST-2's 67k training sentences
METHODS = ("sparsebert", "magnitude", "sparsebert_from_teacher", "small_dense",
           "no_attention", "no_hidden", "prediction_only")
ABLATIONS = ("sparsebert_from_teacher", "no_attention", "no_hidden", "prediction_only")


class Cell(NamedTuple):
  task: str
  method: str
  sparsity: float
  seed: int

  @property
  def name(self) -> str:
    return f"{self.method}-s{round(self.sparsity * 100)}-seed{self.seed}"


def grid(tasks: tuple[str, ...] = TASKS, methods: tuple[str, ...] = METHODS) -> list[Cell]:
  """The study's cells, in the order they run: the headline first (every task's
  SparseBERT, no-KD magnitude and small dense student at 90%, seed 0), then 95%, then the
  extra seeds, then the ablations, so a partly run grid already answers the main question."""
  cells = []
  for task in tasks:
    for method in methods:
      for sparsity in (0.9, 0.95):
        if method in ABLATIONS and (sparsity != 0.9 or task not in ("RTE", "MRPC")):
          continue
        seeds = (3 if method in ("sparsebert", "small_dense") and sparsity == 0.9
                 and task in ("RTE", "MRPC") else 1)
        cells += [Cell(task, method, sparsity, seed) for seed in range(seeds)]
  # Stable sort: within a phase, tasks and methods keep their order.
  return sorted(cells, key=lambda c: (c.method in ABLATIONS, c.seed > 0, c.sparsity != 0.9))


def _load_config(path: Path, arg: str):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config(task: str, sparsity: float, smoke: bool):
  """The preset of a task (``configs/minilm_glue.py``; ``configs/tiny.py`` in smoke mode)."""
  if smoke:
    return _load_config(ROOT / "configs" / "tiny.py", f"task={task},sparsity={sparsity}")
  subsample = SST2_SUBSAMPLE if task == "SST-2" else 0
  return _load_config(ROOT / "configs" / "minilm_glue.py",
                      f"task={task},sparsity={sparsity},subsample={subsample}")


def small_dense_size(config: Any, keep: float) -> dict[str, int]:
  """``config.student`` sizes (layers, heads) whose dense encoder has the weight count
  closest to ``keep`` of ``config``'s: layers divide the teacher's (the layer map), heads
  divide its heads (attention distillation averages groups), the FFN keeps its ratio."""
  from jaxprune import models
  target = keep * models.encoder_weight_count(config)
  ratio, head_dim = config.intermediate_size // config.hidden_size, config.head_dim
  best = None
  for layers in (n for n in range(1, config.num_hidden_layers + 1)
                 if config.num_hidden_layers % n == 0):
    for heads in (a for a in range(1, config.num_attention_heads + 1)
                  if config.num_attention_heads % a == 0):
      hidden = heads * head_dim
      size = models.encoder_weight_count(config.replace(
          num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
          intermediate_size=ratio * hidden))
      if best is None or abs(size - target) < abs(best[0] - target):
        best = (size, dict(layers=layers, heads=heads, intermediate=ratio * heads * head_dim))
  return best[1]


def cell_config(cell: Cell, teacher: Path, smoke: bool):
  """The prune-mode config of one cell, its teacher at ``teacher``."""
  from jaxprune.models import BertConfig
  config = base_config(cell.task, cell.sparsity, smoke)
  config.seed, config.teacher = cell.seed, str(teacher)  # init, dropout and data order
  if cell.method in ("magnitude", "sparsebert_from_teacher"):
    config.model = str(teacher / "hf")
    config.model_overrides = type(config.model_overrides)()  # the teacher's own shape
  if cell.method == "magnitude":
    config.method, config.teacher = "prune_labels", ""
  elif cell.method == "small_dense":
    shape = BertConfig.from_hf_dict(json.loads((teacher / "hf" / "config.json").read_text()))
    config.method = "distill"
    for key, value in small_dense_size(shape, 1 - cell.sparsity).items():
      config.student[key] = value
  elif cell.method in ("no_attention", "prediction_only"):
    config.distill.attention_weight = 0.0
  if cell.method in ("no_hidden", "prediction_only"):
    config.distill.hidden_weight = 0.0
  return config


def _run(config: Any, workdir: Path, mode: str) -> dict:
  """Runs (or resumes) one job unless its summary exists; returns the summary with the
  seconds spent on it, summed over the invocations that worked on it."""
  from jaxprune import trainer
  summary_path, seconds_path = workdir / "summary.json", workdir / "study_seconds.json"
  if not summary_path.is_file():
    spent = json.loads(seconds_path.read_text()) if seconds_path.is_file() else 0.0
    start = time.time()
    try:
      trainer.train_and_evaluate(config, workdir, mode)
    finally:
      workdir.mkdir(parents=True, exist_ok=True)
      seconds_path.write_text(json.dumps(spent + time.time() - start))
  summary = json.loads(summary_path.read_text())
  summary["seconds"] = json.loads(seconds_path.read_text()) if seconds_path.is_file() else None
  return summary


def _provenance() -> dict[str, str]:
  """Where a cell ran: the CPU, the jax version and the jaxprune commit."""
  import subprocess
  import jax
  sys.path.insert(0, str(Path(__file__).parent))
  from train_step import cpu_model  # bench/train_step.py
  commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
  return dict(cpu=cpu_model(), jax=jax.__version__, commit=commit or "unknown")


def run_study(root: Path, cells: list[Cell], results: Path, smoke: bool = False) -> list[dict]:
  """Runs every cell in order (a task's teacher when its first cell needs it) and writes
  one result row per finished cell."""
  rows = {(r["task"], r["cell"]): r
          for r in (json.loads(results.read_text()) if results.is_file() else [])}
  teachers: dict[str, dict] = {}
  for cell in cells:
    task, teacher = cell.task, root / cell.task / "teacher"
    if task not in teachers:
      teachers[task] = _run(base_config(task, 0.9, smoke), teacher, "finetune")
    print(f"== {task} {cell.name}", flush=True)
    s = _run(cell_config(cell, teacher, smoke), root / task / cell.name, "prune")
    metric = next(iter(s["selected"]["scores"]))  # the task's official metric first
    score, teacher_score = s["selected"]["scores"][metric], teachers[task]["selected"][
        "scores"][metric]
    rows[(task, cell.name)] = dict(
        task=task, cell=cell.name, method=cell.method, sparsity=cell.sparsity,
        seed=cell.seed, metric=metric, score=score, teacher=teacher_score,
        retention=score / teacher_score if teacher_score else None,
        baseline=(s.get("baseline_scores") or {}).get(metric),
        encoder_nonzero=s.get("encoder_nonzero"), steps=s["steps"], seconds=s["seconds"],
        **_provenance())
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(list(rows.values()), indent=1) + "\n")
  return list(rows.values())


def report(rows: list[dict], out_md: Path) -> None:
  """Markdown tables (mean +/- std over seeds) and a plot of score vs non-zero encoder
  weights per method, one panel per task, next to ``out_md``."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["task"], r["method"], r["sparsity"]), []).append(r)
  lines = ["| task | method | sparsity | seeds | score | retention | non-zero encoder "
           "weights | minutes |", "|---|---|---|---|---|---|---|---|"]
  for (task, method, sparsity), rs in sorted(groups.items()):
    scores = [100 * r["score"] for r in rs]
    spread = f" +/- {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
    retention = statistics.mean(r["retention"] for r in rs if r["retention"] is not None)
    minutes = statistics.mean((r["seconds"] or 0) / 60 for r in rs)
    lines.append(f"| {task} | {method} | {sparsity:.2f} | {len(rs)} | "
                 f"{statistics.mean(scores):.2f}{spread} ({rs[0]['metric']}) | "
                 f"{100 * retention:.1f}% | {rs[0]['encoder_nonzero']:,} | {minutes:.1f} |")
  out_md.parent.mkdir(parents=True, exist_ok=True)
  plot = out_md.with_name(out_md.stem + "_scores.png")
  if _plot(groups, plot):
    lines += ["", f"![score vs non-zero encoder weights]({plot.name})"]
  out_md.write_text("\n".join(lines) + "\n")


def _plot(groups: dict[tuple, list[dict]], path: Path) -> bool:
  try:
    from matplotlib.figure import Figure
  except ImportError:
    return False
  tasks = sorted({task for task, _, _ in groups})
  fig = Figure(figsize=(4 * len(tasks), 3.4))
  axes = fig.subplots(1, len(tasks), squeeze=False)[0]
  for ax, task in zip(axes, tasks):
    for method in METHODS:
      points = sorted((rs[0]["encoder_nonzero"], statistics.mean(100 * r["score"] for r in rs))
                      for (t, m, _), rs in groups.items() if t == task and m == method)
      if points:
        ax.plot(*zip(*points), "o-", label=method)
    ax.set(title=task, xlabel="non-zero encoder weights", xscale="log")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return True


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", type=Path, default=Path("runs/study"),
                      help="work directories, one per cell (resumable)")
  parser.add_argument("--results", type=Path, default=ROOT / "bench/results/glue_study.json")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--smoke", action="store_true", help="a 3-cell grid on configs/tiny.py")
  parser.add_argument("--report", type=Path, help="write the tables and plot here")
  args = parser.parse_args(argv)
  from jaxprune.data import get_task
  tasks = tuple(get_task(t).name for t in args.tasks.split(","))
  methods = tuple(args.methods.split(","))
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    sys.exit(f"glue_study: error: unknown methods {unknown}: expected some of {METHODS}")
  cells = grid(tasks, methods)
  if args.smoke:
    cells = [Cell("MRPC", m, 0.8, 0) for m in ("sparsebert", "magnitude", "small_dense")]
  rows = run_study(args.root, cells, args.results, smoke=args.smoke)
  if args.report:
    report(rows, args.report)


if __name__ == "__main__":
  main()
