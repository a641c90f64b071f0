"""The comparison study: SparseBERT against its baselines and ablations on small GLUE tasks.

Run (each cell is its own resumable work directory: interrupt and re-run, finished
cells -- a summary in their directory, or a row in ``--results`` -- are skipped; cells run
one at a time, in-process, through the trainer):

  python bench/glue_study.py --root runs/study                 # the whole grid
  python bench/glue_study.py --root runs/study --tasks rte,mrpc --methods sparsebert
  python bench/glue_study.py --report-only --report docs/results.md \
      --summary README.md                                      # tables + plots + summary

The grid (``grid``): per task a teacher (``configs/minilm_glue.py``'s finetune), then
cells of (task, method, sparsity, seed):

* ``sparsebert``: prune the pre-trained model while distilling the teacher (the paper);
* ``magnitude``: magnitude-prune the fine-tuned teacher on gold labels, no KD (the
  paper's baseline; ``method=prune_labels`` from ``<teacher>/hf``);
* ``sparsebert_from_teacher``: SparseBERT starting from the fine-tuned teacher (the
  paper's "knowledge lost" ablation);
* ``small_dense``: a dense student cut from the pre-trained model (``models.shrink``)
  with about as many encoder weights as the sparse one keeps, distilled the same way;
* ``no_attention``, ``no_hidden``, ``prediction_only``: SparseBERT without those KD terms;
* ``sparsebert_long``: SparseBERT trained twice as long (the sparsity ramp and the steps
  at the final sparsity both doubled), the fix tried where the score was still rising at
  95% (``FIXES``: not part of the issue's grid, run after it);
* ``attention_light``, ``intermediate_ramp_only``, ``augmented``, ``attention_kl``,
  ``lr_low``, ``attention_kl_long``: levers for 95% (``LEVERS``, on MRPC and STS-B, run
  last; the attention KL also at 90% on CoLA, the task below the 90% target): the
  attention MSE weighted 0.1 instead of 1; the attention and hidden terms switched off
  when the sparsity ramp ends instead of at 80%; the same number of steps drawn from a
  TinyBERT-style augmentation of the training split (``AUGMENT_COPIES`` draws per text,
  created once per task under ``<root>/<task>/augmented-x<N>``) instead of epochs over
  the split itself; the attention term as the KL of the attention distributions instead
  of the raw scores' MSE; the student's learning rate at ``LR_LOW`` instead of the
  preset's; the attention KL on ``sparsebert_long``'s schedule (the preset's at 95%),
  against that cell;
* ``preset``: SparseBERT as a user runs it, ``configs/minilm_glue.py`` on its defaults
  (each task's distillation terms; from 95% on the long schedule and the attention KL):
  the cells issue 40's targets are judged on, and README's SparseBERT columns. A preset
  cell whose config is that of another cell with a result (same task, sparsity and seed)
  takes that result (its row names the ``twin``); its row keeps the config's id, and
  when the preset has changed since, the cell is run again (the old work directory set
  aside).

Sparsities 0.9 and 0.95; the ablations and ``sparsebert_from_teacher`` on RTE and MRPC
at 0.9 only; seeds 0-2 for ``sparsebert`` and ``small_dense`` at 0.9 on RTE and MRPC,
and for the ablations in ``CONFIRM`` (a task's best student found, before it becomes the
task's preset); the fixes at 0.95, seed 0; the preset last, at both sparsities, seeds 0-2
on RTE and MRPC (``PRESET_SEEDS``).
Results go to ``--results`` (JSON, one row per finished cell, rewritten after each cell).
``--smoke`` runs a 3-cell grid on ``configs/tiny.py`` (what the test runs). Runtime on the
2-core Xeon, measured per cell: small dense 10-17 minutes, SparseBERT and magnitude 20-30
on an idle machine (CoLA's 20 epochs included), a task's teacher 10-25; the 46 cells of
the grid and five teachers, about 15 CPU hours, the five fixes about 6 more (twice a
SparseBERT cell each): run it in pieces, never next to a speed benchmark. A
failing cell is reported and the grid goes on; SIGTERM/SIGINT stops it after the running
cell saved a checkpoint. Each cell's wall time is kept in ``study_seconds.json`` in its
work directory, rewritten every 30 s, so a killed invocation keeps its time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("RTE", "MRPC", "STS-B", "CoLA", "SST-2")
SST2_SUBSAMPLE = 8000  # seeded subsample of SST-2's 67k training sentences
METHODS = ("sparsebert", "magnitude", "sparsebert_from_teacher", "small_dense",
           "no_attention", "no_hidden", "prediction_only", "sparsebert_long",
           "attention_light", "intermediate_ramp_only", "augmented", "attention_kl", "lr_low",
           "attention_kl_long", "preset")
# SparseBERT as a user runs it: ``configs/minilm_glue.py`` with its defaults for the task
# and sparsity (each task's terms; the long schedule and the attention KL from 95% on), the
# cells that issue 40's targets are judged on. Where a preset cell's config is the same as
# another cell's of the grid (same task, sparsity and seed), that cell's run is its result
# (``twin``) rather than a second run of the same thing.
PRESET = "preset"
PRESET_SEEDS = {"RTE": 3, "MRPC": 3}  # the small, noisy tasks; 1 seed elsewhere
ABLATIONS = ("sparsebert_from_teacher", "no_attention", "no_hidden", "prediction_only")
ABLATION_TASKS = ("RTE", "MRPC")  # the ablations run at 90% on these only
FIXES = {"sparsebert_long": 0.95}  # method -> the sparsity it is tried at
# Levers of issue 40, measured first at 95% on MRPC and STS-B against the grid's plain
# SparseBERT cell of the same seed (the terms' balance: with 1:1 weights the attention
# MSE is 12-120x the prediction term; the intermediate terms during the ramp only).
LEVER_TASKS = ("MRPC", "STS-B")
# method -> {sparsity: the tasks it runs on}. The attention KL is also tried at 90% on
# CoLA, where the 90% target falls short (the preset's 96.6% average misses 97% by 0.4
# points, and CoLA, at 90.8%, is the task that holds it down).
LEVERS = {"attention_light": {0.95: LEVER_TASKS},
          "intermediate_ramp_only": {0.95: LEVER_TASKS}, "augmented": {0.95: LEVER_TASKS},
          "attention_kl": {0.95: LEVER_TASKS, 0.9: ("CoLA",)}, "lr_low": {0.95: LEVER_TASKS},
          "attention_kl_long": {0.95: LEVER_TASKS}}
# The levers that change the long schedule's cell (sparsebert_long) rather than the plain
# one: the attention KL was above the plain cell on all 3 seeds on MRPC at 95% (81.63 ±
# 0.93 against 79.92 ± 0.50), and the preset trains twice as long from 95% on.
ON_LONG = ("attention_kl_long",)
ATTENTION_LIGHT = 0.1  # attention_light's attention weight (hidden and prediction keep 1)
# lr_low's student learning rate: a third of the preset's 3e-4 (the teacher's; the reference
# distils at 3e-5). MRPC at 95% collapses to one class mid-ramp on seeds 0 and 1 (F1 18.6
# and 22.4 at one evaluation) with and without the attention KL.
LR_LOW = 1e-4
AUGMENT_COPIES = 10  # augmented's draws per text (the x10; MRPC: 3,668 -> ~77k rows)
# Follow-ups: an ablation whose one seed was the best student found for its task gets
# seeds 1 and 2 as well before it becomes that task's preset (RTE: the prediction term
# alone, 58.12 on seed 0 against SparseBERT's 51.14 ± 0.83; MRPC at 95%: the attention KL,
# 82.35 F1 on seed 0 against the plain cell's 80.38, run on STS-B's seeds alongside; the
# plain cell's seeds at 95% on MRPC, which that comparison needs; MRPC at 95%: the KL on
# the long schedule, 85.25 F1 on seed 0 against the long MSE cell's 82.13).
CONFIRM = (("RTE", "prediction_only"), ("MRPC", "sparsebert"), ("MRPC", "attention_kl"),
           ("STS-B", "attention_kl"), ("MRPC", "attention_kl_long"))


class Cell(NamedTuple):
  task: str
  method: str
  sparsity: float
  seed: int

  @property
  def name(self) -> str:
    return f"{self.method}-s{round(self.sparsity * 100)}-seed{self.seed}"


class StudyError(RuntimeError):
  """Some cells failed; the others ran and their rows are written."""


def grid(tasks: tuple[str, ...] = TASKS, methods: tuple[str, ...] = METHODS) -> list[Cell]:
  """The study's cells, in the order they run: the headline first (every task's
  SparseBERT, no-KD magnitude and small dense student at 90%, seed 0), then 95%, then the
  extra seeds, then the ablations (and their follow-up seeds), then the fixes, so a
  partly run grid already answers the main question."""
  cells = []
  for task in tasks:
    for method in methods:
      for sparsity in (0.9, 0.95):
        if method in ABLATIONS and (sparsity != 0.9 or task not in ABLATION_TASKS):
          continue
        if method in FIXES and sparsity != FIXES[method]:
          continue
        if method in LEVERS and task not in LEVERS[method].get(sparsity, ()):
          continue
        seeds = (3 if (method in ("sparsebert", "small_dense") and sparsity == 0.9
                       and task in ("RTE", "MRPC")) or (task, method) in CONFIRM else 1)
        if method == PRESET:
          seeds = PRESET_SEEDS.get(task, 1)
        cells += [Cell(task, method, sparsity, seed) for seed in range(seeds)]
  # Stable sort: within a phase, tasks and methods keep their order.
  return sorted(cells, key=lambda c: (c.method == PRESET, c.method in LEVERS, c.method in FIXES,
                                      c.method in ABLATIONS, c.seed > 0, c.sparsity != 0.9))


def _load_config(path: Path, arg: str):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config(task: str, sparsity: float, smoke: bool, preset: bool = False):
  """The preset of a task (``configs/minilm_glue.py``; ``configs/tiny.py`` in smoke mode),
  with every distillation term on every task (``terms=all``), the grid's schedule at
  every sparsity (``schedule=plain``) and the reference's attention MSE
  (``attention=mse``): the grid's SparseBERT is the paper's method
  whatever a task's preset has since chosen from the grid. ``preset``: the config file's
  own defaults instead (``PRESET``'s cells)."""
  if smoke:
    return _load_config(ROOT / "configs" / "tiny.py", f"task={task},sparsity={sparsity}")
  subsample = SST2_SUBSAMPLE if task == "SST-2" else 0
  grid_args = "" if preset else ",terms=all,schedule=plain,attention=mse"
  return _load_config(ROOT / "configs" / "minilm_glue.py",
                      f"task={task},sparsity={sparsity},subsample={subsample}{grid_args}")


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
  config = base_config(cell.task, cell.sparsity, smoke, preset=cell.method == PRESET)
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
  if cell.method in ("sparsebert_long", *ON_LONG):  # ramp and intermediate_until: fractions
    config.train.epochs *= 2
  if cell.method == "attention_light":
    config.distill.attention_weight = ATTENTION_LIGHT
  if cell.method == "intermediate_ramp_only":  # attention and hidden terms end with the ramp
    config.distill.intermediate_until = config.prune.ramp_fraction
  if cell.method in ("attention_kl", "attention_kl_long"):
    config.distill.attention_loss = "kl"
  if cell.method == "lr_low":
    config.train.lr = LR_LOW
  if cell.method == "augmented":  # the plain cell's steps and evaluations, augmented text
    config.train.num_steps, per_epoch = plain_steps(config)
    config.train.eval_every = config.train.eval_every or per_epoch
    config.augment_copies = AUGMENT_COPIES
    config.aug_dir = str(teacher.parent / f"augmented-x{AUGMENT_COPIES}")
  return config


# Config fields that do not change a run's result: the teacher's path (it names the
# machine's run directory) and the reports drawn besides the metrics.
NOT_IN_CONFIG_ID = ("teacher", "tensorboard", "plot")


def config_id(config: Any) -> str:
  """A short hash of everything in ``config`` but ``NOT_IN_CONFIG_ID``: equal ids, the
  same run (so adding a report switch to the config does not re-run finished cells)."""
  import hashlib
  settings = config.to_dict()
  for key in NOT_IN_CONFIG_ID:
    settings.pop(key, None)
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def twin(cell: Cell, teacher: Path, rows: dict[tuple[str, str], dict],
         smoke: bool = False) -> Cell | None:
  """A cell of another method with ``cell``'s task, sparsity, seed and config that has a
  row in ``rows``: the same run, so its result is ``cell``'s (a preset that is one of the
  grid's variants). Small dense and augmented cells train another model or on other data,
  so they are never compared (their configs read the teacher's and the task's files)."""
  config = cell_config(cell, teacher, smoke).to_dict()
  for method in METHODS:
    other = Cell(cell.task, method, cell.sparsity, cell.seed)
    if (method in (cell.method, "small_dense", "augmented")
        or (cell.task, other.name) not in rows):
      continue
    if cell_config(other, teacher, smoke).to_dict() == config:
      return other
  return None


def plain_steps(config: Any) -> tuple[int, int]:
  """(student steps, steps per epoch) of ``config`` on its own (unaugmented) training
  split, as the trainer derives them: fixed so that an augmented cell trains as long and
  evaluates as often (every epoch of the split, not of its 20x larger augmentation)."""
  from jaxprune import data
  n = len(data.read_split(config, data.get_task(config.task), "train"))
  if config.train_subsample:
    n = min(n, config.train_subsample)
  per_epoch = data.steps_per_epoch(n, config.train.batch_size)
  return max(1, int(round(config.train.epochs * per_epoch))), per_epoch


class _Stopwatch:
  """Keeps ``path`` (JSON seconds) = ``spent`` + time since start, rewritten atomically
  every ``every`` seconds from a daemon thread and once more on exit: a run killed
  with SIGKILL (a session's end, a preempted VM) loses at most ``every`` seconds of its
  accounting instead of the whole invocation."""

  def __init__(self, path: Path, every: float = 30.0):
    self.path, self.every = path, every
    self.spent = json.loads(path.read_text()) if path.is_file() else 0.0
    self.start, self._done = time.time(), threading.Event()
    self._thread = threading.Thread(target=self._tick, daemon=True)

  def _write(self) -> None:
    from jaxprune import paths
    paths.write_text(self.path, json.dumps(self.spent + time.time() - self.start))

  def _tick(self) -> None:
    while not self._done.wait(self.every):
      self._write()

  def __enter__(self) -> "_Stopwatch":
    self._thread.start()
    return self

  def __exit__(self, *exc: Any) -> None:
    self._done.set()
    self._thread.join()
    self._write()


def _run(config: Any, workdir: Path, mode: str) -> dict:
  """Runs (or resumes) one job unless its summary exists; returns the summary with the
  seconds spent on it, summed over the invocations that worked on it."""
  from jaxprune import trainer
  summary_path, seconds_path = workdir / "summary.json", workdir / "study_seconds.json"
  if not summary_path.is_file():
    with _Stopwatch(seconds_path):
      trainer.train_and_evaluate(config, workdir, mode)
    (workdir / "study_provenance.json").write_text(json.dumps(_provenance()))
  summary = json.loads(summary_path.read_text())
  summary["seconds"] = json.loads(seconds_path.read_text()) if seconds_path.is_file() else None
  provenance = workdir / "study_provenance.json"
  summary["provenance"] = json.loads(provenance.read_text()) if provenance.is_file() else {}
  return summary


def _curve(workdir: Path, metric: str) -> list[list[float]]:
  """The cell's dev evaluations: [step, sparsity, score] rows (empty without metrics)."""
  from jaxprune import report
  return [[r["step"], round(r.get("sparsity", 0.0), 4), r[metric]]
          for r in report.read_metrics(workdir / "metrics.jsonl")
          if r.get("kind") == "eval" and metric in r]


def _provenance() -> dict[str, str]:
  """Where a cell finished: the CPU, the jax version and the jaxprune commit (written into
  its workdir then, so that re-running the study elsewhere does not relabel it)."""
  import subprocess
  import jax
  sys.path.insert(0, str(Path(__file__).parent))
  from train_step import cpu_model  # bench/train_step.py
  commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
  return dict(cpu=cpu_model(), jax=jax.__version__, commit=commit or "unknown")


class _Exclusive:
  """Holds an exclusive lock on ``<results>.lock`` (``flock``: released when the process
  ends, however it ends): a second study writing the same results file would overwrite
  the rows the first one adds, so it stops at once instead, naming the holder."""

  def __init__(self, results: Path):
    self.path = results.with_name(results.name + ".lock")

  def __enter__(self) -> "_Exclusive":
    import fcntl
    import os
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.file = open(self.path, "a+")  # noqa: SIM115 -- held until __exit__
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or "?"
      self.file.close()
      raise StudyError(f"{self.path.with_suffix('')}: another glue_study (pid {holder}) is "
                       "writing it; wait for it to end or pass another --results") from None
    self.file.truncate(0)
    self.file.write(str(os.getpid()))
    self.file.flush()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.file.close()


def run_study(root: Path, cells: list[Cell], results: Path, smoke: bool = False) -> list[dict]:
  """Runs every cell in order (a task's teacher when its first cell needs it) and writes
  one result row per finished cell. A cell that already has a row in ``results`` but no
  finished work directory (``summary.json``) under ``root`` -- it ran on another machine,
  or the runs were deleted -- is skipped, so the committed results file lets a new
  machine go on where the grid stopped. One study at a time writes ``results``
  (``_Exclusive``)."""
  with _Exclusive(results):
    return _run_cells(root, cells, results, smoke)


def _run_cells(root: Path, cells: list[Cell], results: Path, smoke: bool) -> list[dict]:
  from jaxprune.checkpoint import Preempted
  rows = {(r["task"], r["cell"]): r
          for r in (json.loads(results.read_text()) if results.is_file() else [])}
  keys = ("cpu", "jax", "commit")
  teachers: dict[str, dict] = {}
  failed = []
  for cell in cells:
    task, teacher = cell.task, root / cell.task / "teacher"
    workdir = root / task / cell.name
    preset_id = config_id(cell_config(cell, teacher, smoke)) if cell.method == PRESET else None
    if preset_id and (task, cell.name) in rows:
      _drop_if_preset_changed(rows, cell, preset_id, workdir)
    if (task, cell.name) in rows and not (workdir / "summary.json").is_file():
      print(f"== {task} {cell.name}: in {results.name}, skipped", flush=True)
      continue  # finished elsewhere (no finished work directory here): the row is the record
    if preset_id and not workdir.is_dir() and (same := twin(cell, teacher, rows, smoke)):
      print(f"== {task} {cell.name}: the config of {same.name}, its result", flush=True)
      rows[(task, cell.name)] = dict(rows[(task, same.name)], cell=cell.name, method=PRESET,
                                     twin=same.name, config_id=preset_id)
      _write_rows(results, rows)
      continue
    print(f"== {task} {cell.name}", flush=True)
    try:  # one broken cell (or teacher) must not stop an unattended grid
      if task not in teachers:
        teachers[task] = _run(base_config(task, 0.9, smoke), teacher, "finetune")
      s = _run(cell_config(cell, teacher, smoke), root / task / cell.name, "prune")
    except Preempted:
      raise  # SIGTERM/SIGINT: the cell saved a checkpoint; stop the grid (re-run resumes)
    except Exception as e:  # noqa: BLE001 -- reported below and in the exit status
      failed.append(f"{task} {cell.name}: {type(e).__name__}: {e}")
      print(f"glue_study: {failed[-1]}", file=sys.stderr, flush=True)
      continue
    metric = next(iter(s["selected"]["scores"]))  # the task's official metric first
    score, teacher_score = s["selected"]["scores"][metric], teachers[task]["selected"][
        "scores"][metric]
    rows[(task, cell.name)] = dict(
        task=task, cell=cell.name, method=cell.method, sparsity=cell.sparsity,
        seed=cell.seed, metric=metric, score=score, teacher=teacher_score,
        retention=score / teacher_score if teacher_score else None,
        baseline=(s.get("baseline_scores") or {}).get(metric),
        encoder_nonzero=s.get("encoder_nonzero"), steps=s["steps"], seconds=s["seconds"],
        curve=_curve(root / task / cell.name, metric),
        **(s.get("provenance") or {k: rows.get((task, cell.name), {}).get(k, "?") for k in keys}))
    if preset_id:
      rows[(task, cell.name)]["config_id"] = preset_id
    _write_rows(results, rows)
  if failed:
    raise StudyError(f"{len(failed)} cell(s) failed: " + "; ".join(failed))
  return list(rows.values())


def _write_rows(results: Path, rows: dict[tuple[str, str], dict]) -> None:
  results.parent.mkdir(parents=True, exist_ok=True)
  results.write_text(json.dumps(list(rows.values()), indent=1) + "\n")


def _drop_if_preset_changed(rows: dict[tuple[str, str], dict], cell: Cell, new: str,
                            workdir: Path) -> None:
  """A preset cell's row (and work directory) from before ``configs/minilm_glue.py``
  changed (its config id is no longer ``new``) no longer says what the preset does: the
  row is dropped and the directory set aside as ``<name>.old-<its config id>``, so the
  cell runs (or finds its twin) again."""
  old = rows[(cell.task, cell.name)].get("config_id")
  if old == new:
    return
  print(f"== {cell.task} {cell.name}: the preset changed since it ran ({old} -> {new}); "
        "running it again", flush=True)
  del rows[(cell.task, cell.name)]
  if workdir.is_dir():
    workdir.rename(workdir.with_name(f"{workdir.name}.old-{old}"))


BEGIN, END = "<!-- glue_study report: begin -->", "<!-- glue_study report: end -->"


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["task"], r["method"], r["sparsity"]), []).append(r)
  return groups


def _mean(values) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.mean(values) if values else None


def averages(rows: list[dict]) -> dict[tuple[str, float], tuple[float, int]]:
  """(method, sparsity) -> (mean over tasks of the mean retention over seeds, #tasks)."""
  per_task: dict[tuple, list[float]] = {}
  for (task, method, sparsity), rs in _groups(rows).items():
    retention = _mean(r["retention"] for r in rs)
    if retention is not None:
      per_task.setdefault((method, sparsity), []).append(retention)
  return {key: (statistics.mean(v), len(v)) for key, v in per_task.items()}


AT_BASELINE = "†"
AT_BASELINE_NOTE = (f"{AT_BASELINE} at or below the majority class (constant prediction) "
                    "baseline: no better than always predicting the most frequent label, "
                    "whatever its retention says.")
NOT_IN_GRID = "—"
NOT_IN_GRID_NOTE = (f"{NOT_IN_GRID} not in the study's grid: the ablations and the start from "
                    f"the fine-tuned teacher run on {' and '.join(ABLATION_TASKS)} only, "
                    f"the levers at 95% on {' and '.join(LEVER_TASKS)} only"
                    + "".join(f", {m} at {sp:.0%} on {' and '.join(ts)}"
                              for m, at in LEVERS.items() for sp, ts in at.items() if sp != 0.95)
                    + ".")


def _cell_text(rs: list[dict]) -> str:
  """Mean score (± std over seeds), marked when at or below the baseline, and retention."""
  scores = [100 * r["score"] for r in rs]
  spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
  baseline = rs[0].get("baseline")
  mark = AT_BASELINE if baseline is not None and statistics.mean(scores) <= 100 * baseline else ""
  retention = _mean(r["retention"] for r in rs)
  kept = f" ({100 * retention:.1f}%)" if retention is not None else ""
  return f"{statistics.mean(scores):.2f}{spread}{mark}{kept}"


# Issue 40's targets for the preset: its five-task average retention at each sparsity,
# the 95% stretch goal, and every task's student this many points of its metric over the
# majority class (constant) baseline at both sparsities.
TARGETS = {0.9: 0.97, 0.95: 0.96}
STRETCH = {0.95: 0.97}
OVER_BASELINE = 2.0


def _targets(rows: list[dict], tasks: tuple[str, ...]) -> list[str]:
  """Issue 40's targets, checked on the preset's cells (pending until every task ran)."""
  groups, avg = _groups(rows), averages(rows)
  lines = []
  for sparsity, goal in TARGETS.items():
    got = avg.get((PRESET, sparsity))
    if not got or got[1] < len(tasks):
      lines.append(f"- SparseBERT (preset) at {sparsity:.0%} keeps >= {goal:.1%}: pending "
                   f"({got[1] if got else 0} of {len(tasks)} tasks run)")
    else:
      verdict = "met" if got[0] >= goal else f"missed by {100 * (goal - got[0]):.1f} points"
      stretch = STRETCH.get(sparsity)
      if stretch:
        verdict += f"; stretch >= {stretch:.1%}: {'met' if got[0] >= stretch else 'missed'}"
      lines.append(f"- SparseBERT (preset) at {sparsity:.0%} keeps {got[0]:.1%} on average "
                   f"(target >= {goal:.1%}): {verdict}")
    margins = {t: 100 * (statistics.mean(r["score"] for r in groups[t, PRESET, sparsity])
                         - groups[t, PRESET, sparsity][0]["baseline"])
               for t in tasks if (t, PRESET, sparsity) in groups
               and groups[t, PRESET, sparsity][0].get("baseline") is not None}
    short = [f"{t} ({m:+.2f})" for t, m in margins.items() if m < OVER_BASELINE]
    verdict = (f"short on {', '.join(short)}" if short else "met on every task run"
               if margins else "pending")
    lines.append(f"  - >= {OVER_BASELINE:g} points over the baseline: {verdict} "
                 f"({len(margins)} of {len(tasks)} tasks run)")
    if got and got[1] == len(tasks):
      for other in ("small_dense", "magnitude"):
        theirs = avg.get((other, sparsity))
        if not theirs or theirs[1] < len(tasks):
          lines.append(f"  - vs {other}: pending")
        else:
          diff = 100 * (got[0] - theirs[0])
          lines.append(f"  - vs {other} ({theirs[0]:.1%}): "
                       f"{'beats it' if diff > 0 else 'loses'} by {abs(diff):.1f} points")
  return lines


def _machines(rows: list[dict], name_up_to: int = 3) -> list[str]:
  """A line per machine (CPU and jax version) the rows ran on, the most used first; with
  more than one, each says how many cells ran there, naming them when there are few (a
  cell's minutes are only comparable with those of cells from the same machine)."""
  where: dict[tuple[str, str], list[dict]] = {}
  for r in (r for r in rows if not r.get("twin")):  # a twin's run is its twin's
    where.setdefault((r.get("cpu", "?"), r.get("jax", "?")), []).append(r)
  lines = []
  for (cpu, jax), rs in sorted(where.items(), key=lambda kv: (-len(kv[1]), kv[0])):
    which = ""
    if len(where) > 1:
      names = ", ".join(f"{r['task']} {r['cell']}" for r in rs)
      which = f" ({len(rs)} cells)" if len(rs) > name_up_to else f" ({names})"
    lines.append(f"Machine: {cpu}; jax {jax}{which}.")
  return lines


SUMMARY_BEGIN = "<!-- glue_study summary: begin -->"
SUMMARY_END = "<!-- glue_study summary: end -->"
SUMMARY_METHODS = ((PRESET, "SparseBERT"), ("magnitude", "magnitude"),
                   ("small_dense", "small dense"))


def summary_table(rows: list[dict], tasks: tuple[str, ...] = TASKS) -> str:
  """The study in one small table (README): per task its official dev metric for the
  majority class, the teacher and each method at 90% and 95% (seed means, † at or
  below the majority class), then each method's average retention; between the
  summary markers, as ``write_summary`` puts it into a file."""
  groups = _groups(rows)
  avg = averages(rows)
  columns = [(m, sp) for sp in (0.9, 0.95) for m, _ in SUMMARY_METHODS]
  names = dict(SUMMARY_METHODS)
  lines = [SUMMARY_BEGIN, "",
           "| task (metric) | majority / constant | teacher | "
           + " | ".join(f"{names[m]} {sp:.0%}" for m, sp in columns) + " |",
           "|---|" + "---|" * (2 + len(columns))]
  for task in tasks:
    task_rows = [r for r in rows if r["task"] == task]
    if not task_rows:
      continue
    baseline, teacher = task_rows[0].get("baseline"), task_rows[0]["teacher"]
    cells = []
    for method, sparsity in columns:
      rs = groups.get((task, method, sparsity))
      if not rs:
        cells.append("pending")
        continue
      mean = statistics.mean(100 * r["score"] for r in rs)
      at_baseline = baseline is not None and mean <= 100 * baseline
      cells.append(f"{mean:.2f}{AT_BASELINE if at_baseline else ''}")
    lines.append(f"| {task} ({task_rows[0]['metric']}) | "
                 + (f"{100 * baseline:.2f}" if baseline is not None else "") + " | "
                 f"{100 * teacher:.2f} | " + " | ".join(cells) + " |")
  lines.append("| **average retention** | | | " + " | ".join(
      f"**{avg[key][0]:.1%}**" if key in avg and avg[key][1] == len(tasks) else "pending"
      for key in columns) + " |")
  lines += ["", SUMMARY_END]
  return "\n".join(lines)


def write_summary(rows: list[dict], path: Path, tasks: tuple[str, ...] = TASKS) -> None:
  """Replaces the text between the summary markers in ``path`` (e.g. README.md) with
  ``summary_table(rows)``; the file must have the markers."""
  text = path.read_text()
  if SUMMARY_BEGIN not in text or SUMMARY_END not in text:
    raise StudyError(f"{path}: no {SUMMARY_BEGIN} ... {SUMMARY_END} markers to write into")
  start, end = text.index(SUMMARY_BEGIN), text.index(SUMMARY_END) + len(SUMMARY_END)
  path.write_text(text[:start] + summary_table(rows, tasks) + text[end:])


def report(rows: list[dict], out_md: Path, cells: list[Cell] | None = None,
           tasks: tuple[str, ...] = TASKS) -> None:
  """Writes the study's tables, targets and plots into ``out_md``, between the two report
  markers when the file has them (so the hand-written discussion around them stays)."""
  groups = _groups(rows)
  avg = averages(rows)
  done = {(r["task"], r["cell"]) for r in rows}
  planned = {(c.task, c.method, c.sparsity) for c in cells} if cells is not None else None
  twins = sum(1 for r in rows if r.get("twin"))
  lines = [BEGIN, "", f"Cells run: {len(done)}"
           + (f" of {len(cells)}" if cells is not None else "")
           + (f" ({twins} of them preset cells that took the result of another cell with "
              "their config)" if twins else "") + "."]
  lines += _machines(rows)
  commits = sorted({r.get("commit", "?") for r in rows})
  lines += [f"jaxprune commits: {', '.join(commits)}.", "",
            "### Targets (issue 40: five-task averages of retention)", ""]
  lines += _targets(rows, tasks)
  for sparsity in (0.9, 0.95):
    if not any(key[2] == sparsity for key in groups):
      continue
    lines += ["", f"### {sparsity:.0%} sparsity (small dense: the same number of encoder "
              "weights): official dev metric (retention of the teacher's score)", "",
              "| method | " + " | ".join(tasks) + " | average retention |",
              "|---|" + "---|" * (len(tasks) + 1)]
    teacher = {t: next((r["teacher"] for r in rows if r["task"] == t), None) for t in tasks}
    baseline = {t: next((r["baseline"] for r in rows if r["task"] == t
                         and r.get("baseline") is not None), None) for t in tasks}
    for name, values in (("majority class / constant", baseline), ("teacher", teacher)):
      lines.append(f"| {name} | " + " | ".join(
          f"{100 * values[t]:.2f}" if values[t] is not None else "" for t in tasks) + " | |")
    table = []
    for method in METHODS:
      if not any((t, method, sparsity) in groups for t in tasks):
        continue
      cells_text = [_cell_text(groups[(t, method, sparsity)]) if (t, method, sparsity) in groups
                    else "pending" if planned is None or (t, method, sparsity) in planned
                    else NOT_IN_GRID for t in tasks]
      mean, n = avg.get((method, sparsity), (None, 0))
      summary = f"{mean:.1%}" + (f" ({n} of {len(tasks)} tasks)" if n < len(tasks) else "")
      table.append(f"| {method} | " + " | ".join(cells_text) + f" | {summary} |")
    lines += table + (["", AT_BASELINE_NOTE] if any(AT_BASELINE in r for r in table) else [])
    lines += ["", NOT_IN_GRID_NOTE] if any(f"| {NOT_IN_GRID} |" in r for r in table) else []
  lines += ["", "### Every cell (mean ± std over seeds)", "",
            "| task | method | sparsity | seeds | metric | score | retention | baseline | "
            "non-zero encoder weights | steps | minutes |", "|---|" * 11 + ""]
  lines[-1] = "|" + "---|" * 11
  for (task, method, sparsity), rs in sorted(groups.items()):
    retention, baseline = _mean(r["retention"] for r in rs), rs[0].get("baseline")
    minutes = _mean((r["seconds"] or 0) / 60 for r in rs)
    lines.append(
        f"| {task} | {method} | {sparsity:.2f} | {len(rs)} | {rs[0]['metric']} | "
        f"{_cell_text(rs).split(' (')[0]} | "
        + (f"{100 * retention:.1f}%" if retention is not None else "") + " | "
        + (f"{100 * baseline:.2f}" if baseline is not None else "") + " | "
        f"{rs[0]['encoder_nonzero']:,} | {rs[0]['steps']} | {minutes:.1f} |")
  pending = [c for c in cells or [] if (c.task, c.name) not in done]
  if pending:
    lines += ["", f"Pending ({len(pending)}): "
              + ", ".join(f"{c.task} {c.name}" for c in pending) + "."]
  out_md.parent.mkdir(parents=True, exist_ok=True)
  plots = [(out_md.with_name(out_md.stem + "_scores.png"), _plot_scores, "score vs non-zero "
            "encoder weights"), (out_md.with_name(out_md.stem + "_retention.png"),
                                 _plot_retention, "retention vs sparsity"),
           (out_md.with_name(out_md.stem + "_curves.png"), _plot_curves,
            "dev score during training"),
           (out_md.with_name(out_md.stem + "_levers.png"), _plot_levers,
            "dev score during training at 95%, every seed of the levers")]
  for path, plot, title in plots:
    if plot(groups, path):
      lines += ["", f"![{title}]({path.name})"]
  lines += ["", END]
  block = "\n".join(lines)
  text = out_md.read_text() if out_md.is_file() else ""
  if BEGIN in text and END in text:
    block = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
  else:
    block = "# GLUE study results\n\n" + block + "\n"
  out_md.write_text(block)


def _figure(n: int, width: float = 4, rows: int = 0, height: float = 3.4, **subplots):
  """A Figure of ``n`` panels ``width`` inches wide in one row (their axes as a list), or
  with ``rows`` > 0 in that many rows (a 2-D array); (None, None) without matplotlib."""
  try:
    from matplotlib.figure import Figure
  except ImportError:
    return None, None
  fig = Figure(figsize=(width * n, height * max(rows, 1)))
  axes = fig.subplots(max(rows, 1), n, squeeze=False, **subplots)
  return fig, axes if rows else axes[0]


# After matplotlib's ten: one more colour for each method past the tenth.
EXTRA_COLORS = ("navy", "darkgoldenrod", "teal", "crimson", "olive", "indigo")


def _color(method: str) -> str:
  """One colour per method in every plot (matplotlib's ten, then ``EXTRA_COLORS``)."""
  i = METHODS.index(method)
  return f"C{i}" if i < 10 else EXTRA_COLORS[i - 10]


def _reference_lines(ax, row: dict) -> None:
  """The teacher's score and the majority class (or constant) baseline of ``row``'s task."""
  ax.axhline(100 * row["teacher"], color="k", lw=0.8, ls="--", label="teacher")
  if row.get("baseline") is not None:
    ax.axhline(100 * row["baseline"], color="0.5", lw=0.8, ls="-.", label="majority")


def _save(fig, path: Path) -> bool:
  """One legend right of the panels with every label any panel drew (a method run on one
  task only is named too), a tight layout, the PNG at ``path``."""
  fig.tight_layout()
  handles = {}
  for ax in fig.axes:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, handle)
  fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left",
             bbox_to_anchor=(1.0, 0.5))
  fig.savefig(path, dpi=100, bbox_inches="tight")
  return True


def _plot_scores(groups: dict[tuple, list[dict]], path: Path) -> bool:
  """Score vs non-zero encoder weights, one line per method, one panel per task."""
  tasks = [t for t in TASKS if any(g[0] == t for g in groups)]
  fig, axes = _figure(len(tasks)) if tasks else (None, None)
  if fig is None:
    return False
  for ax, task in zip(axes, tasks):
    for method in METHODS:
      points = sorted((rs[0]["encoder_nonzero"] / 1e6,
                       statistics.mean(100 * r["score"] for r in rs))
                      for (t, m, _), rs in groups.items() if t == task and m == method)
      if points:
        ax.plot(*zip(*points), "o-", color=_color(method), label=method)
    first = next(rs[0] for (t, _, _), rs in groups.items() if t == task)
    _reference_lines(ax, first)
    ax.set(title=task, xlabel="non-zero encoder weights (millions)", ylabel=first["metric"])
    ax.grid(alpha=0.3)
  return _save(fig, path)


def _final_step(steps: tuple, sparsity: tuple, target: float) -> int | None:
  """The first evaluated step at the ``target`` sparsity (None: never reached)."""
  return next((st for st, sp in zip(steps, sparsity) if sp >= target - 1e-3), None)


def _plot_curves(groups: dict[tuple, list[dict]], path: Path) -> bool:
  """Dev score over training steps of every 90% cell (seed 0; a preset cell only where
  it ran itself), one panel per task, with the point where the final sparsity is
  reached marked."""
  tasks = [t for t in TASKS if any(r.get("curve") for (task, _, sparsity), rs in groups.items()
                                   if task == t and sparsity == 0.9 for r in rs)]
  fig, axes = _figure(len(tasks)) if tasks else (None, None)
  if fig is None:
    return False
  for ax, task in zip(axes, tasks):
    for method in METHODS:
      rs = [r for r in groups.get((task, method, 0.9), [])  # a twin would hide its twin
            if r["seed"] == 0 and r.get("curve") and not r.get("twin")]
      if not rs:
        continue
      steps, sparsity, score = zip(*rs[0]["curve"])
      ax.plot(steps, [100 * v for v in score], ".-", color=_color(method), label=method,
              lw=1)
      final = _final_step(steps, sparsity, 0.9)
      if final is not None:
        ax.axvline(final, color=_color(method), lw=0.5, ls=":")
    first = next(rs[0] for (t, _, _), rs in groups.items() if t == task)
    _reference_lines(ax, first)
    ax.set(title=f"{task}, 90% (dotted: final sparsity)", xlabel="step",
           ylabel=first["metric"])
    ax.grid(alpha=0.3)
  return _save(fig, path)


def _plot_levers(groups: dict[tuple, list[dict]], path: Path) -> bool:
  """Dev score over training steps at 95% on the lever tasks: one row per task, one
  panel per method (the grid's SparseBERT, the fix and the levers), one line per seed,
  with the point where the final sparsity is reached marked: a run that loses the task
  mid-ramp shows as a dip to one class's score."""
  shown = ("sparsebert", *FIXES, *LEVERS)
  runs = {(t, m): sorted((r for r in groups.get((t, m, 0.95), []) if r.get("curve")),
                         key=lambda r: r["seed"]) for t in LEVER_TASKS for m in shown}
  tasks = [t for t in LEVER_TASKS if any(runs[t, m] for m in LEVERS)]
  methods = [m for m in shown if any(runs[t, m] for t in tasks)]
  fig, axes = (_figure(len(methods), width=3.2, rows=len(tasks), height=3.0, sharey="row")
               if tasks else (None, None))
  if fig is None:
    return False
  for row, task in zip(axes, tasks):
    for ax, method in zip(row, methods):
      for r in runs[task, method]:
        steps, sparsity, score = zip(*r["curve"])
        ax.plot(steps, [100 * v for v in score], ".-", lw=1, color=f"C{r['seed']}",
                label=f"seed {r['seed']}")
        final = _final_step(steps, sparsity, 0.95)
        if final is not None:
          ax.axvline(final, color="0.6", lw=0.5, ls=":")
      first = next((rs[0] for (t, _, _), rs in groups.items() if t == task), None)
      if first is not None:
        _reference_lines(ax, first)
      ax.set(title=f"{task} 95%: {method}", xlabel="step")
      ax.grid(alpha=0.3)
    row[0].set(ylabel=runs[task, next(m for m in methods if runs[task, m])][0]["metric"])
  return _save(fig, path)


def _plot_retention(groups: dict[tuple, list[dict]], path: Path) -> bool:
  """Retention vs sparsity per method: each task (thin) and their average (thick)."""
  fig, axes = _figure(1, width=5.5) if groups else (None, None)
  if fig is None:
    return False
  ax = axes[0]
  for method in (m for m in METHODS if any(g[1] == m for g in groups)):
    color = _color(method)
    by_sparsity: dict[float, list[float]] = {}
    for (task, m, sparsity), rs in groups.items():
      retention = _mean(r["retention"] for r in rs)
      if m == method and retention is not None:
        by_sparsity.setdefault(sparsity, []).append(100 * retention)
    xs = sorted(by_sparsity)
    ax.plot([100 * x for x in xs], [statistics.mean(by_sparsity[x]) for x in xs], "o-",
            color=color, lw=2, label=method)
    for x in xs:
      ax.scatter([100 * x] * len(by_sparsity[x]), by_sparsity[x], color=color, s=8, alpha=0.4)
  ax.axhline(100, color="k", lw=0.8, ls="--")
  ax.set(xlabel="encoder sparsity (%)", ylabel="% of the teacher's score",
         title="retention (dots: tasks, line: their mean)")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", type=Path, default=Path("runs/study"),
                      help="work directories, one per cell (resumable)")
  parser.add_argument("--results", type=Path, default=ROOT / "bench/results/glue_study.json")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--sparsities", default="0.9,0.95",
                      help="run only the cells at these sparsities")
  parser.add_argument("--smoke", action="store_true", help="a 3-cell grid on configs/tiny.py")
  parser.add_argument("--report", type=Path, help="write the tables and plots here")
  parser.add_argument("--summary", type=Path,
                      help="write the one-table summary between the markers of this file "
                      "(README.md)")
  parser.add_argument("--report-only", action="store_true",
                      help="report the results file as it is, without running any cell")
  args = parser.parse_args(argv)
  from jaxprune.checkpoint import Preempted
  from jaxprune.data import get_task
  tasks = tuple(get_task(t).name for t in args.tasks.split(","))
  methods = tuple(args.methods.split(","))
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    sys.exit(f"glue_study: error: unknown methods {unknown}: expected some of {METHODS}")
  try:
    sparsities = {float(x) for x in args.sparsities.split(",")}
  except ValueError:
    sparsities = set()
  if not sparsities or not sparsities <= {0.9, 0.95}:
    sys.exit(f"glue_study: error: --sparsities={args.sparsities}: expected 0.9, 0.95 or both")
  planned = grid(tasks, methods)
  cells = [c for c in planned if c.sparsity in sparsities]
  if args.smoke:
    cells = [Cell("MRPC", m, 0.8, 0) for m in ("sparsebert", "magnitude", "small_dense")]
  if args.report_only:
    rows = json.loads(args.results.read_text()) if args.results.is_file() else []
  else:
    try:
      rows = run_study(args.root, cells, args.results, smoke=args.smoke)
    except StudyError as e:
      sys.exit(f"glue_study: error: {e}")
    except Preempted as e:  # SIGTERM/SIGINT: the running cell saved its checkpoint
      sys.exit(f"glue_study: stopped: {e}")
  if args.report:
    report(rows, args.report, None if args.smoke else planned, tasks)
  if args.summary:
    write_summary(rows, args.summary, tasks)


if __name__ == "__main__":
  main()
