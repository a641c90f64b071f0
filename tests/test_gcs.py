"""gs:// work directories against a GCS JSON API on 127.0.0.1 (gcp-storage-emulator),
through the same gcsfs / epath / tensorstore stack a TPU-pod run uses.

Files are published only when complete, remote folders are read through a local copy,
and the tiny finetune -> prune -> eval -> export chain with every path in the bucket
(the teacher read from there too) scores and exports exactly as conftest's reference
chain in local folders; a run stopped by SIGTERM, then killed with SIGKILL, resumes from
the bucket to the reference's final state, bit for bit.
"""

import json
import os
import random
import re
import signal
import time

import pytest
from etils import epath

from conftest import cpu_env
from jaxprune import paths
from jaxprune import report
from test_launch import _checkpoint_steps
from test_multiprocess import STEPS, _checkpoint
from test_trainer import _cli, assert_same_states, interrupt

# conftest's reference chain: the teacher on 1 device, the prune run on 4.
DEVICES = {"finetune": 1, "prune": 4, "eval": 4, "export": 1}


def test_paths_write_publish_and_read_back(gcs_bucket, tmp_path):
  root = f"{gcs_bucket}/paths"
  paths.write_text(f"{root}/a/summary.json", '{"x": 1}')
  assert paths.read_text(f"{root}/a/summary.json") == '{"x": 1}'
  with paths.staged_dir(f"{root}/hf") as tmp:
    (tmp / "config.json").write_text("{}")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "w.bin").write_bytes(b"\x00\x01")
    assert not paths.exists(f"{root}/hf/config.json")  # nothing visible before the end
  with pytest.raises(RuntimeError):
    with paths.staged_dir(f"{root}/broken") as tmp:
      (tmp / "config.json").write_text("{}")
      raise RuntimeError("export failed half way")
  assert not paths.exists(f"{root}/broken")
  local = paths.local_copy(f"{root}/hf")
  assert (local / "config.json").read_text() == "{}"
  assert (local / "sub" / "w.bin").read_bytes() == b"\x00\x01"
  with pytest.raises(FileNotFoundError, match="no such file"):
    paths.local_copy(f"{root}/missing")


def test_metrics_on_gcs_are_uploaded_on_flush_and_continued_on_resume(gcs_bucket):
  from jaxprune import report
  workdir = f"{gcs_bucket}/metrics-run"
  with report.MetricWriter(workdir) as w:
    w.write(1, {"loss": 1.0})
    w.flush()
    assert [r["step"] for r in report.read_metrics(f"{workdir}/metrics.jsonl")] == [1]
    w.write(2, {"loss": 0.5})
  with report.MetricWriter(workdir) as w:  # a resumed run appends to what is there
    w.write(3, {"loss": 0.25})
  rows = report.read_metrics(f"{workdir}/metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.25)]
  assert paths.files(f"{workdir}/tb")  # TensorBoard events are uploaded too


def test_hf_export_to_gcs_loads_back_as_a_teacher(gcs_bucket, minilm_dir):
  import numpy as np
  from jaxprune import models, trainer
  model, params, config = models.from_config("minilm-l6", num_labels=2, seed=0,
                                             num_hidden_layers=1, hidden_size=32,
                                             num_attention_heads=4, intermediate_size=64)
  run = f"{gcs_bucket}/teacher-run"
  paths.write_text(f"{run}/metrics.jsonl", "")  # a run workdir...
  with pytest.raises(models.ModelNotFoundError, match="has no hf/ export"):
    trainer.load_teacher(run, 2)  # ...whose run has not finished
  models.export_hf(params, config, f"{run}/hf", tokenizer_from="minilm-l6")
  _, loaded, loaded_config = trainer.load_teacher(run, 2)
  assert loaded_config.hidden_size == 32
  flat_a, flat_b = models.convert.flatten(params), models.convert.flatten(loaded)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=k)


def _args(one_process_prune_run, teacher: str | None = None) -> list[str]:
  """The reference prune job's flags without --mode and --workdir, reading ``teacher``
  (None: no teacher flag, as a finetune, eval or export run takes them)."""
  args, _, _ = one_process_prune_run
  args = [a for a in args[1:] if not a.startswith("--config.teacher=")]
  return args + ([f"--config.teacher={teacher}"] if teacher else [])


def _run(mode: str, workdir: str, *extra: str):
  result = _cli(f"--mode={mode}", *extra, f"--workdir={workdir}", env=cpu_env(DEVICES[mode]))
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _summary(workdir: str) -> dict:
  return json.loads(paths.read_text(f"{workdir}/summary.json"))


@pytest.fixture(scope="module")
def local_and_gcs_runs(gcs_bucket, one_process_prune_run):
  """conftest's reference chain (local folders) and the same chain in the bucket, as
  {run: (local workdir, gs:// workdir)}; prints the bucket chain's time."""
  _, local_student, _ = one_process_prune_run
  root = f"{gcs_bucket}/chain"
  t0 = time.time()
  # TensorBoard events and run.png too (configs/tiny.py turns them off): staged locally
  # and uploaded (GCS objects cannot be appended to).
  reports = ("--config.tensorboard=True", "--config.plot=True")
  _run("finetune", f"{root}/teacher", *_args(one_process_prune_run), *reports)
  # The prune run is stopped by SIGTERM, resumed, killed (SIGKILL) and resumed again.
  student = ["--mode=prune", *_args(one_process_prune_run, f"{root}/teacher"), *reports]
  workdir, env = f"{root}/student", cpu_env(DEVICES["prune"])
  rng = random.Random(os.getpid())
  code, stderr = interrupt(student, workdir, signal.SIGTERM, rng.randint(3, 5), env=env)
  # SIGTERM saves at a step boundary and says so in one line (exit code 75).
  assert code == 75, stderr[-2000:]
  line = [l for l in stderr.splitlines() if l.startswith("jaxprune:")]
  assert len(line) == 1 and re.search(r"preempted at step (\d+); re-run", line[0]), stderr
  step = int(re.search(r"step (\d+)", line[0])[1])
  assert step in _checkpoint_steps(workdir)  # not through gcsfs: it would cache the listing
  assert {"step": step, "kind": "preempted", "signal": 15} in report.read_metrics(
      f"{workdir}/metrics.jsonl")
  kill_at = rng.randint(step + 2, max(step + 2, STEPS - 3))
  code, stderr = interrupt(student, workdir, signal.SIGKILL, kill_at, env=env)
  assert code == -signal.SIGKILL, stderr[-2000:]
  _run("prune", workdir, *student[1:])
  print(f"\ntiny finetune + prune in gs:// (2 x {STEPS} steps, the prune stopped at step "
        f"{step}, killed once step {kill_at} was logged, resumed): {time.time() - t0:.1f} s")
  return {"teacher": (str(local_student.parent / "teacher"), f"{root}/teacher"),
          "student": (str(local_student), f"{root}/student")}


@pytest.mark.slow
def test_chain_on_gcs_scores_and_exports_exactly_as_local(local_and_gcs_runs,
                                                          one_process_prune_run, tmp_path):
  """The bucket's chain, its prune run stopped by SIGTERM, resumed, killed with SIGKILL
  and resumed from the bucket, ends bitwise where the uninterrupted local chain ended."""
  _, _, reference = one_process_prune_run
  gcs_student = epath.Path(local_and_gcs_runs["student"][1])
  assert_same_states(reference, _checkpoint(gcs_student, STEPS))
  for run, (local, gcs) in local_and_gcs_runs.items():
    a, b = _summary(local), _summary(gcs)
    assert a["selected"] == b["selected"] and a["teacher_scores"] == b["teacher_scores"]
    for name in ("hf/model.safetensors", "hf/config.json", "model.sparse.safetensors"):
      assert (epath.Path(f"{local}/{name}").read_bytes()
              == epath.Path(f"{gcs}/{name}").read_bytes()), (run, name)
    for name in ("metrics.jsonl", "run.png", "hf/vocab.txt"):
      assert paths.is_file(f"{gcs}/{name}"), name
    assert list(epath.Path(f"{gcs}/tb").iterdir()), run  # TensorBoard event files
  local, gcs = local_and_gcs_runs["student"]
  # eval of the bucket's run = its summary's scores (= the local run's, checked above).
  evaluated = _run("eval", gcs, *_args(one_process_prune_run)).stdout
  assert json.loads(evaluated)["dev"] == _summary(gcs)["selected"]["scores"]
  _run("export", local, "--format=sparse", f"--out={tmp_path / 'export'}")
  _run("export", gcs, "--format=sparse", f"--out={gcs}-export")
  assert (epath.Path(f"{gcs}-export/model.sparse.safetensors").read_bytes()
          == (tmp_path / "export" / "model.sparse.safetensors").read_bytes())
