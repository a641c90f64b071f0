"""bench/glue_study.py: the grid, the small-dense sizing, and a smoke study that resumes."""

import importlib.util
import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("glue_study", ROOT / "bench" / "glue_study.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_grid_is_the_issue_grid():
  cells = study.grid()
  names = {(c.task, c.name) for c in cells}
  assert len(cells) == len(names)
  # 5 tasks x (sparsebert, magnitude, small_dense) x 2 sparsities, +2 seeds x 2 methods on
  # RTE and MRPC at 0.9, + 4 ablations on RTE and MRPC at 0.9, + 2 seeds of RTE's
  # prediction-only student (CONFIRM), + the fix at 0.95, + 6 levers on MRPC and STS-B,
  # + the attention-KL lever at 0.9 on CoLA, + 2 seeds of the attention-KL lever on each,
  # of MRPC's SparseBERT at 0.95 and of MRPC's attention KL on the long schedule (CONFIRM),
  # + the preset at both sparsities (3 seeds on RTE and MRPC, 1 elsewhere).
  assert len(cells) == (5 * 3 * 2 + 2 * 2 * 2 + 2 * 4 + 2 + 5 + 2 * 6 + 1 + 2 * 2 + 2 + 2
                        + 2 * (3 + 3 + 1 + 1 + 1))
  assert ("RTE", "sparsebert-s90-seed2") in names and ("CoLA", "sparsebert-s90-seed1") not in names
  assert ("MRPC", "no_hidden-s90-seed0") in names and ("MRPC", "no_hidden-s95-seed0") not in names
  assert ("STS-B", "prediction_only-s90-seed0") not in names
  # The headline runs first (a partly run grid answers it), then 95%, seeds, ablations.
  assert cells[:15] == [study.Cell(t, m, 0.9, 0) for t in study.TASKS
                        for m in ("sparsebert", "magnitude", "small_dense")]
  assert {c.sparsity for c in cells[15:30]} == {0.95}
  assert [c.seed for c in cells[30:38]] == [1, 2] * 4
  assert cells[38:40] == [study.Cell("MRPC", "sparsebert", 0.95, s) for s in (1, 2)]
  assert {c.method for c in cells[40:48]} == set(study.ABLATIONS)
  assert cells[48:50] == [study.Cell("RTE", "prediction_only", 0.9, s) for s in (1, 2)]
  assert ("MRPC", "prediction_only-s90-seed1") not in names
  assert cells[50:55] == [study.Cell(t, "sparsebert_long", 0.95, 0) for t in study.TASKS]
  # The levers: the one at 90% first, then those at 95%, then their seeds.
  assert cells[55] == study.Cell("CoLA", "attention_kl", 0.9, 0)
  assert ("MRPC", "attention_kl-s90-seed0") not in names
  assert cells[56:68] == [study.Cell(t, m, 0.95, 0) for t in study.LEVER_TASKS
                          for m in study.LEVERS]
  assert cells[68:74] == [study.Cell(t, m, 0.95, s) for t in study.LEVER_TASKS
                          for m in ("attention_kl", "attention_kl_long")
                          if (t, m) in study.CONFIRM for s in (1, 2)]
  # The preset last: seed 0 at 90% (the twins of finished cells), then at 95%, then seeds.
  assert cells[74:84] == [study.Cell(t, "preset", sp, 0) for sp in (0.9, 0.95)
                          for t in study.TASKS]
  assert cells[84:] == [study.Cell(t, "preset", sp, s) for sp in (0.9, 0.95)
                        for t in ("RTE", "MRPC") for s in (1, 2)]


def test_each_lever_changes_one_thing_from_the_grids_sparsebert(tmp_path):
  plain = study.cell_config(study.Cell("STS-B", "sparsebert", 0.95, 0), tmp_path, False)
  for method, section, key, value in (
      ("attention_light", "distill", "attention_weight", study.ATTENTION_LIGHT),
      ("intermediate_ramp_only", "distill", "intermediate_until", plain.prune.ramp_fraction),
      ("attention_kl", "distill", "attention_loss", "kl"),
      ("lr_low", "train", "lr", study.LR_LOW)):
    lever = study.cell_config(study.Cell("STS-B", method, 0.95, 0), tmp_path, False)
    assert lever[section][key] == value != plain[section][key]
    lever[section][key] = plain[section][key]
    assert lever.to_dict() == plain.to_dict()
  # ... at 90% too (the attention KL on CoLA, against the grid's CoLA cell at 90%) ...
  cola = study.cell_config(study.Cell("CoLA", "sparsebert", 0.9, 0), tmp_path, False)
  lever = study.cell_config(study.Cell("CoLA", "attention_kl", 0.9, 0), tmp_path, False)
  assert lever.distill.attention_loss == "kl" != cola.distill.attention_loss
  lever.distill.attention_loss = cola.distill.attention_loss
  assert lever.to_dict() == cola.to_dict()
  # ... and a lever on the long schedule changes one thing from the long cell.
  long = study.cell_config(study.Cell("STS-B", "sparsebert_long", 0.95, 0), tmp_path, False)
  lever = study.cell_config(study.Cell("STS-B", "attention_kl_long", 0.95, 0), tmp_path, False)
  assert long.train.epochs == 2 * plain.train.epochs
  assert lever.distill.attention_loss == "kl" != long.distill.attention_loss
  lever.distill.attention_loss = long.distill.attention_loss
  assert lever.to_dict() == long.to_dict()


def test_the_augmented_lever_trains_as_many_steps_on_augmented_text(tmp_path):
  teacher = tmp_path / "STS-B" / "teacher"
  plain = study.cell_config(study.Cell("STS-B", "sparsebert", 0.95, 0), teacher, False)
  lever = study.cell_config(study.Cell("STS-B", "augmented", 0.95, 0), teacher, False)
  # STS-B's 5,749 training pairs: 179 batches of 32 an epoch, 10 epochs.
  assert plain.train.num_steps == 0 and plain.train.epochs == 10 and plain.train.batch_size == 32
  assert study.plain_steps(plain) == (1790, 179) and lever.train.num_steps == 1790
  # Evaluated every epoch of the split, as the plain cell (eval_every 0 = every epoch of
  # the training data, which the augmentation makes ~20x longer).
  assert plain.train.eval_every == 0 and lever.train.eval_every == 179
  assert lever.augment_copies == study.AUGMENT_COPIES > 0 == plain.augment_copies
  assert lever.aug_dir == str(tmp_path / "STS-B" / f"augmented-x{study.AUGMENT_COPIES}")
  for key in ("augment_copies", "aug_dir"):
    lever[key] = plain[key]
  lever.train.num_steps, lever.train.eval_every = plain.train.num_steps, plain.train.eval_every
  assert lever.to_dict() == plain.to_dict()


def test_the_long_fix_doubles_the_training_and_keeps_the_fractions(tmp_path):
  plain, long = (study.cell_config(study.Cell("MRPC", m, 0.95, 0), tmp_path, smoke=False)
                 for m in ("sparsebert", "sparsebert_long"))
  assert long.train.epochs == 2 * plain.train.epochs == 20
  assert long.prune.ramp_fraction == plain.prune.ramp_fraction  # a ramp twice as long
  assert long.distill.to_dict() == plain.distill.to_dict()
  assert long.method == plain.method and long.model == plain.model


def test_the_grid_distils_every_term_whatever_the_task_preset_chose(tmp_path):
  rte = study.cell_config(study.Cell("RTE", "sparsebert", 0.9, 0), tmp_path, smoke=False)
  assert (rte.distill.attention_weight, rte.distill.hidden_weight) == (1.0, 1.0)
  ablation = study.cell_config(study.Cell("RTE", "prediction_only", 0.9, 0), tmp_path, False)
  assert (ablation.distill.attention_weight, ablation.distill.hidden_weight) == (0.0, 0.0)
  rte.distill.attention_weight = rte.distill.hidden_weight = 0.0
  assert ablation.to_dict() == rte.to_dict()  # the ablation differs in those two terms only


def test_the_grid_schedule_is_plain_at_95_and_the_fix_doubles_it(tmp_path):
  # The preset trains twice as long from 95% on; the grid's 95% cells keep the plain
  # schedule it ran with, and sparsebert_long is that schedule doubled.
  for task, epochs in (("MRPC", 10.0), ("CoLA", 20.0)):
    plain = study.cell_config(study.Cell(task, "sparsebert", 0.95, 0), tmp_path, False)
    long = study.cell_config(study.Cell(task, "sparsebert_long", 0.95, 0), tmp_path, False)
    assert (plain.train.epochs, long.train.epochs) == (epochs, 2 * epochs)
    long.train.epochs = epochs
    assert long.to_dict() == plain.to_dict()


def test_the_preset_is_the_config_files_defaults_and_finds_its_twins(tmp_path):
  # The preset cell is configs/minilm_glue.py as a user runs it: on RTE the prediction
  # alone (the study's prediction_only ablation), from 95% on the long schedule with the
  # attention KL (the attention_kl_long lever), every term, the plain schedule and the
  # attention MSE at 90% elsewhere (sparsebert).
  config = lambda task, method, sparsity, seed=0: study.cell_config(
      study.Cell(task, method, sparsity, seed), tmp_path, False).to_dict()
  user = study._load_config(study.ROOT / "configs" / "minilm_glue.py", "task=cola,sparsity=0.95")
  user.seed, user.teacher = 0, str(tmp_path)
  assert config("CoLA", "preset", 0.95) == user.to_dict()
  assert config("RTE", "preset", 0.9, 2) == config("RTE", "prediction_only", 0.9, 2)
  assert config("MRPC", "preset", 0.9) == config("MRPC", "sparsebert", 0.9)
  assert config("MRPC", "preset", 0.9) != config("MRPC", "sparsebert", 0.9, 1)  # the seed
  done = lambda *names: {("MRPC", n): {} for n in names}
  rows = done("sparsebert-s90-seed0", "no_hidden-s90-seed0", "sparsebert_long-s95-seed0")
  twin = lambda sparsity, rows: study.twin(study.Cell("MRPC", "preset", sparsity, 0), tmp_path,
                                           rows)
  assert twin(0.9, rows) == study.Cell("MRPC", "sparsebert", 0.9, 0)
  assert twin(0.9, done("no_hidden-s90-seed0")) is None  # another config: no twin
  # At 95% the preset distils attention distributions on the long schedule: the lever's
  # cell, not the long cell with the reference's MSE.
  assert twin(0.95, rows) is None
  rows.update(done("attention_kl_long-s95-seed0"))
  assert twin(0.95, rows) == study.Cell("MRPC", "attention_kl_long", 0.95, 0)
  ids = {study.config_id(study.cell_config(study.Cell("MRPC", "preset", 0.9, 0), teacher, False))
         for teacher in (tmp_path / "a", tmp_path / "b")}
  assert len(ids) == 1  # the teacher's path is not part of the id
  config = study.cell_config(study.Cell("MRPC", "preset", 0.9, 0), tmp_path, False)
  before = study.config_id(config)
  config.tensorboard = config.plot = False  # nor are the reports a run draws
  assert study.config_id(config) == before
  config.train.lr *= 2
  assert study.config_id(config) != before


def test_preset_cells_take_their_twins_result_and_rerun_when_the_preset_changes(
    tmp_path, monkeypatch):
  ran = []

  def fake_run(config, workdir, mode):
    ran.append(workdir.name)
    (workdir / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "summary.json").write_text("{}")
    return dict(selected=dict(scores=dict(f1=0.8 if mode == "finetune" else 0.7)), steps=3,
                seconds=1.0)
  monkeypatch.setattr(study, "_run", fake_run)
  monkeypatch.setattr(study, "_curve", lambda workdir, metric: [])
  root, results = tmp_path / "runs", tmp_path / "results.json"
  results.write_text(json.dumps([dict(task="MRPC", cell="sparsebert-s90-seed0",
                                      method="sparsebert", sparsity=0.9, score=0.85)]))
  cells = [study.Cell("MRPC", "preset", sp, 0) for sp in (0.9, 0.95)]
  rows = {r["cell"]: r for r in study.run_study(root, cells, results)}
  assert ran == ["teacher", "preset-s95-seed0"]  # 90%: sparsebert's run, not a second one
  assert rows["preset-s90-seed0"]["score"] == 0.85
  assert rows["preset-s90-seed0"]["twin"] == "sparsebert-s90-seed0"
  assert rows["preset-s95-seed0"]["score"] == 0.7 and "twin" not in rows["preset-s95-seed0"]
  ran.clear()
  study.run_study(root, cells, results)
  # The run is re-read from its summary (the fake _run records that too); the twin stands.
  assert ran == ["teacher", "preset-s95-seed0"]
  # The preset changes (here: its id): both rows are dropped, the run is set aside.
  real_id = study.config_id
  monkeypatch.setattr(study, "config_id", lambda config: "new" + real_id(config))
  ran.clear()
  rows = {r["cell"]: r for r in study.run_study(root, cells, results)}
  assert ran == ["teacher", "preset-s95-seed0"]
  assert rows["preset-s90-seed0"]["twin"] == "sparsebert-s90-seed0"  # found again
  old = [p.name for p in (root / "MRPC").iterdir() if ".old-" in p.name]
  first_id = real_id(study.cell_config(cells[1], root / "MRPC" / "teacher", False))
  assert old == [f"preset-s95-seed0.old-{first_id}"]


def test_one_study_at_a_time_writes_a_results_file(tmp_path):
  results = tmp_path / "results.json"
  with study._Exclusive(results):
    with pytest.raises(study.StudyError, match=r"results.json: another glue_study \(pid \d+\) "
                       "is writing it"):
      study.run_study(tmp_path, [], results)
  assert study.run_study(tmp_path, [], results) == []  # released


def test_small_dense_size_matches_the_sparse_weight_count():
  from jaxprune.models import BertConfig, encoder_weight_count
  minilm = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536)
  size = study.small_dense_size(minilm, 0.1)
  # 10% of 10,616,832 = 1,061,683; the closest shape with whole heads and the FFN ratio:
  assert size == dict(layers=6, heads=4, intermediate=512)  # 6 x (4 x 128^2 + 2 x 128 x 512)
  small = minilm.replace(num_hidden_layers=6, hidden_size=128, num_attention_heads=4,
                         intermediate_size=512)
  assert encoder_weight_count(small) == 1_179_648


@pytest.mark.slow
def test_smoke_study_runs_resumes_and_reports(tmp_path, glue_dir, minilm_dir):
  results, md = tmp_path / "results.json", tmp_path / "results.md"
  study.main(["--smoke", f"--root={tmp_path / 'runs'}", f"--results={results}",
              f"--report={md}"])
  rows = json.loads(results.read_text())
  assert [r["method"] for r in rows] == ["sparsebert", "magnitude", "small_dense"]
  for r in rows:
    assert r["metric"] == "f1" and 0 <= r["score"] <= 1 and r["seconds"] > 0
    assert r["cpu"] and r["jax"] and r["commit"] and r["curve"][-1][0] == r["steps"]
  sparse, _, dense = rows
  # The small dense student has about the sparse one's non-zero encoder weights.
  assert 0.5 < dense["encoder_nonzero"] / sparse["encoder_nonzero"] < 2
  table = md.read_text()
  assert "| MRPC | small_dense | 0.80 | 1 |" in table
  # A re-run skips finished cells: nothing is trained again.
  before = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("summary.json")}
  study.main(["--smoke", f"--root={tmp_path / 'runs'}", f"--results={results}"])
  assert {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("summary.json")} == before
  assert json.loads(results.read_text()) == rows  # provenance too: where the cell ran


def _row(task, method, sparsity, seed, score, teacher):
  return dict(task=task, cell=f"{method}-s{round(sparsity * 100)}-seed{seed}", method=method,
              sparsity=sparsity, seed=seed, metric="accuracy", score=score, teacher=teacher,
              retention=score / teacher, baseline=0.5, encoder_nonzero=1000, steps=10,
              seconds=60.0, cpu="test cpu", jax="0", commit="abc",
              curve=[[5, sparsity / 2, score / 2], [10, sparsity, score]])


def test_report_averages_targets_and_keeps_the_discussion(tmp_path):
  rows = [_row("RTE", "sparsebert", 0.9, 0, 0.50, 0.50), _row("RTE", "sparsebert", 0.9, 1, 0.48, 0.50),
          _row("MRPC", "sparsebert", 0.9, 0, 0.80, 1.00), _row("RTE", "magnitude", 0.9, 0, 0.45, 0.50)]
  avg = study.averages(rows)
  # RTE: mean of 100% and 96% = 98%; MRPC 80%: the two-task average is 89%.
  assert avg[("sparsebert", 0.9)] == pytest.approx((0.89, 2))
  assert avg[("magnitude", 0.9)] == pytest.approx((0.90, 1))
  # Issue 40's targets are the preset's (baseline 0.5 in _row).
  preset = [dict(r, method="preset") for r in rows if r["method"] == "sparsebert"]
  preset.append(_row("RTE", "preset", 0.95, 0, 0.49, 0.50))
  assert study._targets(rows + preset, ("RTE", "MRPC")) == [
      "- SparseBERT (preset) at 90% keeps 89.0% on average (target >= 97.0%): missed by 8.0 points",
      "  - >= 2 points over the baseline: short on RTE (-1.00) (2 of 2 tasks run)",
      "  - vs small_dense: pending",
      "  - vs magnitude: pending",  # one task of two
      "- SparseBERT (preset) at 95% keeps >= 96.0%: pending (1 of 2 tasks run)",
      "  - >= 2 points over the baseline: short on RTE (-1.00) (1 of 2 tasks run)"]
  assert study._targets([dict(r, score=0.535, teacher=0.54, retention=0.535 / 0.54)
                         for r in preset if r["task"] == "RTE"], ("RTE",))[4:6] == [
      "- SparseBERT (preset) at 95% keeps 99.1% on average (target >= 96.0%): met; stretch "
      ">= 97.0%: met",
      "  - >= 2 points over the baseline: met on every task run (1 of 1 tasks run)"]
  md = tmp_path / "results.md"
  md.write_text(f"# Results\n\nintro\n\n{study.BEGIN}\nSTALE\n{study.END}\n\n## Why\nkept\n")
  study.report(rows, md, study.grid(("RTE", "MRPC")), ("RTE", "MRPC"))
  text = md.read_text()
  assert text.startswith("# Results\n\nintro\n\n") and text.endswith("## Why\nkept\n")
  # RTE and MRPC: 3 methods x 2 sparsities + 2 x 2 seeds + 4 ablations + the 95% fix = 15
  # each, + RTE's 2 follow-up seeds, + MRPC's 6 levers, and 2 more seeds of its attention
  # KL (plain and long schedule) and of its SparseBERT at 0.95, + the preset's 3 seeds at
  # 2 sparsities on each.
  assert "STALE" not in text and "Cells run: 4 of 56." in text
  # At or below the majority class (0.5 here): marked, with the note under the table.
  assert "| sparsebert | 49.00 ± 1.41† (98.0%) | 80.00 (80.0%) | 89.0% |" in text
  assert "| magnitude | 45.00† (90.0%) | pending | 90.0% (1 of 2 tasks) |" in text
  assert text.count(study.AT_BASELINE_NOTE) == 1
  assert "| RTE | magnitude | 0.90 | 1 | accuracy | 45.00† | 90.0% |" in text
  assert "Pending (52): RTE small_dense-s90-seed0" in text


def test_levers_plot_shows_every_seed_of_the_95_cells_of_the_lever_tasks(tmp_path):
  no_levers = [_row("MRPC", "sparsebert", 0.95, 0, 0.8, 0.9)]
  assert not study._plot_levers(study._groups(no_levers), tmp_path / "none.png")
  from matplotlib.image import imread
  rows = no_levers + [_row("MRPC", "attention_kl", 0.95, s, 0.8, 0.9) for s in range(3)]
  rows.append(_row("MRPC", "lr_low", 0.9, 0, 0.8, 0.9))  # not at 95%: no panel
  two = tmp_path / "two.png"
  assert study._plot_levers(study._groups(rows), two)
  three = tmp_path / "three.png"  # one panel more: lr_low at 95%
  assert study._plot_levers(study._groups(rows + [_row("MRPC", "lr_low", 0.95, 0, 0.8, 0.9)]),
                            three)
  width = lambda p: imread(p).shape[1]
  assert 1.3 < width(three) / width(two) < 1.7  # 3.2 inches a panel, plus the legend
  md = tmp_path / "results.md"
  study.report(rows, md)
  assert "](results_levers.png)" in md.read_text()


def test_report_says_which_cells_ran_on_which_machine():
  rows = [_row("RTE", "sparsebert", 0.9, seed, 0.5, 0.5) for seed in range(4)]
  assert study._machines(rows) == ["Machine: test cpu; jax 0."]  # one machine: no counts
  rows.append(dict(_row("RTE", "magnitude", 0.9, 0, 0.5, 0.5), cpu="other cpu"))
  rows.append(dict(rows[0], method="preset", cell="preset-s90-seed0", twin=rows[0]["cell"]))
  assert study._machines(rows) == ["Machine: test cpu; jax 0 (4 cells).",
                                   "Machine: other cpu; jax 0 (RTE magnitude-s90-seed0)."]


def test_report_marks_cells_outside_the_grid_apart_from_pending_ones(tmp_path):
  # Ablations run on RTE and MRPC only: STS-B's is not pending, it is not in the grid.
  rows = [_row("RTE", "no_attention", 0.9, 0, 0.45, 0.50)]
  md = tmp_path / "results.md"
  study.report(rows, md, study.grid(("RTE", "STS-B")), ("RTE", "STS-B"))
  text = md.read_text()
  assert "| no_attention | 45.00† (90.0%) | — | 90.0% (1 of 2 tasks) |" in text
  assert text.count(study.NOT_IN_GRID_NOTE) == 1
  assert "| sparsebert | pending | pending |" not in text  # methods without rows: no line
  study.report(rows, md, None, ("RTE", "STS-B"))  # no grid given: nothing is known missing
  assert "| no_attention | 45.00† (90.0%) | pending | 90.0% (1 of 2 tasks) |" in md.read_text()


def test_a_failing_cell_does_not_stop_the_grid(tmp_path, monkeypatch):
  def fake_run(config, workdir, mode):
    if workdir.name == "magnitude-s90-seed0":
      raise ValueError("boom")
    score = 0.8 if mode == "finetune" else 0.6
    return dict(selected=dict(scores=dict(accuracy=score)), steps=3, seconds=1.0,
                encoder_nonzero=10)
  monkeypatch.setattr(study, "_run", fake_run)
  monkeypatch.setattr(study, "cell_config", lambda cell, teacher, smoke: None)
  monkeypatch.setattr(study, "base_config", lambda task, sparsity, smoke: None)
  cells = [study.Cell("RTE", m, 0.9, 0) for m in ("sparsebert", "magnitude", "small_dense")]
  results = tmp_path / "results.json"
  with pytest.raises(study.StudyError, match=r"1 cell\(s\) failed: RTE magnitude-s90-seed0: "
                     "ValueError: boom"):
    study.run_study(tmp_path, cells, results)
  rows = json.loads(results.read_text())
  assert [(r["method"], r["retention"]) for r in rows] == [("sparsebert", pytest.approx(0.75)),
                                                          ("small_dense", pytest.approx(0.75))]


def test_a_preempted_cell_stops_the_grid(tmp_path, monkeypatch):
  from jaxprune.checkpoint import Preempted
  ran = []

  def fake_run(config, workdir, mode):
    ran.append(workdir.name)
    if workdir.name == "sparsebert-s90-seed0":
      raise Preempted("preempted at step 5")
    return dict(selected=dict(scores=dict(accuracy=0.8)), steps=3, seconds=1.0)
  monkeypatch.setattr(study, "_run", fake_run)
  monkeypatch.setattr(study, "cell_config", lambda cell, teacher, smoke: None)
  monkeypatch.setattr(study, "base_config", lambda task, sparsity, smoke: None)
  monkeypatch.setattr(study, "grid", lambda tasks, methods: [
      study.Cell("RTE", m, 0.9, 0) for m in ("sparsebert", "magnitude")])
  with pytest.raises(SystemExit, match="glue_study: stopped: preempted at step 5"):
    study.main([f"--root={tmp_path}", f"--results={tmp_path / 'r.json'}"])
  assert ran == ["teacher", "sparsebert-s90-seed0"]  # the next cell did not start


def test_sparsities_picks_the_cells_to_run_and_the_report_keeps_the_grid(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(study, "run_study", lambda root, cells, results, smoke: ran.extend(cells)
                      or [])
  study.main([f"--root={tmp_path}", "--tasks=MRPC", "--methods=preset", "--sparsities=0.95",
              f"--report={tmp_path / 'r.md'}"])
  assert ran == [study.Cell("MRPC", "preset", 0.95, s) for s in range(3)]
  assert "Cells run: 0 of 6." in (tmp_path / "r.md").read_text()
  with pytest.raises(SystemExit, match=r"--sparsities=0.8: expected 0.9, 0.95 or both"):
    study.main([f"--root={tmp_path}", "--sparsities=0.8"])


def test_cells_recorded_in_the_results_file_are_skipped_on_a_new_machine(tmp_path, monkeypatch):
  ran = []

  def fake_run(config, workdir, mode):
    ran.append(workdir.name)
    return dict(selected=dict(scores=dict(accuracy=0.8 if mode == "finetune" else 0.6)),
                steps=3, seconds=1.0)
  monkeypatch.setattr(study, "_run", fake_run)
  monkeypatch.setattr(study, "cell_config", lambda cell, teacher, smoke: None)
  monkeypatch.setattr(study, "base_config", lambda task, sparsity, smoke: None)
  done = dict(task="RTE", cell="sparsebert-s90-seed0", method="sparsebert", score=0.5)
  results = tmp_path / "results.json"
  results.write_text(json.dumps([done]))
  cells = [study.Cell("RTE", m, 0.9, 0) for m in ("sparsebert", "magnitude")]
  rows = study.run_study(tmp_path / "runs", cells, results)
  assert ran == ["teacher", "magnitude-s90-seed0"]  # no work directory: the row stands
  assert [r["cell"] for r in rows] == ["sparsebert-s90-seed0", "magnitude-s90-seed0"]
  assert rows[0] == done
  # A cell whose work directory finished here is re-read (its row refreshed), not re-run.
  summary_dir = tmp_path / "runs" / "RTE" / "sparsebert-s90-seed0"
  summary_dir.mkdir(parents=True)
  (summary_dir / "summary.json").write_text("{}")
  ran.clear()
  study.run_study(tmp_path / "runs", cells, results)
  assert ran == ["teacher", "sparsebert-s90-seed0"]  # magnitude has its row now


def test_stopwatch_keeps_the_time_of_a_run_that_never_returns(tmp_path):
  # The ledger is rewritten while the run is going, so a SIGKILLed invocation (whose
  # `finally` never runs) still leaves its time behind; a later invocation adds to it.
  path = tmp_path / "cell" / "study_seconds.json"
  path.parent.mkdir()
  path.write_text("100.0")
  watch = study._Stopwatch(path, every=0.02).__enter__()
  deadline = time.time() + 5
  while json.loads(path.read_text()) < 100.1 and time.time() < deadline:
    time.sleep(0.01)
  assert 100.1 <= json.loads(path.read_text()) < 105  # written mid-run, not at the end
  watch.__exit__(None, None, None)
  total = json.loads(path.read_text())
  with study._Stopwatch(path, every=60):
    pass
  assert total <= json.loads(path.read_text()) < total + 1
  assert not list(path.parent.glob("*.tmp"))


def test_readme_and_docs_show_what_the_results_file_holds(tmp_path):
  """README's study table and docs/results.md's generated block are what
  bench/results/glue_study.json gives now: a number changed by hand, or a results file
  updated without regenerating them (`glue_study.py --report-only --report
  docs/results.md --summary README.md`), fails here."""
  rows = json.loads((ROOT / "bench" / "results" / "glue_study.json").read_text())
  assert study.summary_table(rows) in (ROOT / "README.md").read_text()
  docs = (ROOT / "docs" / "results.md").read_text()
  copy = tmp_path / "results.md"
  copy.write_text(docs)
  study.report(rows, copy, study.grid(study.TASKS, study.METHODS), study.TASKS)

  def generated(text: str) -> str:
    return text[text.index(study.BEGIN):text.index(study.END)]

  assert generated(copy.read_text()) == generated(docs)


def test_summary_table_marks_baseline_cells_and_pending_averages():
  # README's SparseBERT columns are the preset's (what a user runs).
  rows = [_row("RTE", "preset", 0.9, 0, 0.50, 0.60), _row("RTE", "preset", 0.9, 1, 0.52, 0.60),
          _row("RTE", "magnitude", 0.9, 0, 0.55, 0.60), _row("RTE", "sparsebert", 0.9, 0, 0.1, 0.6)]
  table = study.summary_table(rows, ("RTE", "MRPC"))
  # seed mean 51.00 > baseline 50.00; retention (0.50/0.60 + 0.52/0.60)/2 = 85.0%.
  assert "| RTE (accuracy) | 50.00 | 60.00 | 51.00 | 55.00 | pending |" in table
  assert "| **average retention** | | | pending | pending |" in table  # 1 of 2 tasks
  at_baseline = study.summary_table([_row("RTE", "preset", 0.9, 0, 0.50, 0.60)], ("RTE",))
  assert "| 50.00† |" in at_baseline and "**83.3%**" in at_baseline


def test_every_method_has_its_own_colour():
  colours = [study._color(m) for m in study.METHODS]
  assert len(set(colours)) == len(study.METHODS)
