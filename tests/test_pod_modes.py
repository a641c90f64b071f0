"""Every CLI mode as a job on a simulated TPU pod: ``jaxprune-tpu run`` over the fake
gcloud's v4-16 (2 workers x 2 CPU devices, ``jax.distributed.initialize()`` finding the
run itself as on a slice).

Each job must join the distributed run once (the demo trains twice), leave each file to
one writer (``export`` and ``augment`` write on process 0 while the others wait), and
end with status 0 on both workers. The prune mode runs as a job in
tests/test_launch.py's babysit test (preempted, re-created, resumed), on a ``(1, 4)``
mesh whose ``model`` axis spans the two processes: its pruning-event report and its
export gather arrays across hosts (``sharding.to_host``, ``report.layer_counts``).
"""

import json
import re
from pathlib import Path

import pytest

from conftest import FIXTURES
from test_launch import WHERE, _pod_env, fake, launcher  # noqa: F401  (fake: a fixture)

from jaxprune import paths


@pytest.fixture
def pod(fake, gcs_bucket, glue_dir, tmp_path, request) -> tuple[dict, str]:
  """A created and set-up v4-16 (2 workers) and a gs:// folder of the emulator for the
  test's work directories (the launcher takes gs:// only, as a real pod needs). The
  workers read GLUE from $JAXPRUNE_GLUE_DIR, absolute (they run in their own folders)."""
  env = dict(_pod_env(fake), JAXPRUNE_GLUE_DIR=str(glue_dir))
  _pod(env, tmp_path)
  return env, f"{gcs_bucket}/pod-modes/{request.node.name}"


def _pod(env: dict, tmp_path: Path, name: str = "pod") -> None:
  for step in (["create", name, *WHERE, "--accelerator-type=v4-16"],
               ["setup", name, *WHERE, "--local"]):
    result = launcher(*step, env=env)
    assert result.returncode == 0, result.stderr


def _run(env: dict, tmp_path: Path, *flags: str, name: str = "pod") -> str:
  """Runs a job on every worker; returns what the launcher streamed (worker 0)."""
  logs = tmp_path / "logs"
  result = launcher("run", name, *WHERE, f"--logs-dir={logs}", "--run-name=r", "--", *flags,
                    env=env, cwd=tmp_path)
  worker_logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}"
                          for p in sorted(logs.glob(f"{name}/r/worker-*.log")))
  assert result.returncode == 0, result.stderr + worker_logs
  return result.stdout


def _summary(workdir: str) -> dict:
  summary = json.loads(paths.read_text(f"{workdir}/summary.json"))
  assert summary["processes"] == 2 and summary["devices"] == 4, summary
  return summary


@pytest.fixture
def teacher(one_process_prune_run, pod) -> str:
  """conftest's tiny teacher (12 finetune steps on 1 device), its HF export and summary
  copied into the test's bucket folder."""
  local = one_process_prune_run[1].parent / "teacher"
  target = f"{pod[1]}/teacher"
  paths.upload(local / "hf", paths.path(f"{target}/hf"))
  paths.write_text(f"{target}/summary.json", (local / "summary.json").read_text())
  return target


@pytest.mark.slow
def test_eval_on_the_pod(pod, tmp_path, teacher):
  env, _ = pod
  out = _run(env, tmp_path, "--mode=eval", "--config=configs/tiny.py", f"--workdir={teacher}")
  scores = json.loads(out[out.index("{"):])
  assert scores["task"] == "MRPC" and set(scores["dev"]) == {"f1", "accuracy"}
  expected = json.loads(paths.read_text(f"{teacher}/summary.json"))["last_scores"]
  assert scores["dev"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_export_without_a_config_on_the_pod(pod, tmp_path, teacher):
  env, bucket = pod
  out = _run(env, tmp_path, "--mode=export", f"--workdir={teacher}", "--format=sparse",
             f"--out={bucket}/sparse")
  assert len(re.findall(r"exported .* as sparse to", out)) == 1, out
  assert paths.is_file(f"{bucket}/sparse/model.sparse.safetensors")


@pytest.mark.slow
def test_augment_on_the_pod(pod, tmp_path):
  env, bucket = pod
  out = _run(env, tmp_path, "--mode=augment", "--config=configs/tiny.py",
             f"--config.glue_dir={FIXTURES}", f"--workdir={bucket}/aug")
  assert len(re.findall(r"wrote \d+ rows", out)) == 1, out
  lines = paths.read_text(f"{bucket}/aug/MRPC/train_aug.tsv").splitlines()
  assert len(lines) > 1 and len(set(lines)) == len(lines)


@pytest.mark.slow
def test_finetune_and_demo_on_the_pod_with_the_compilation_cache_in_the_bucket(pod, tmp_path):
  """The demo: a finetune run (the teacher) then a prune run, in one process per worker
  (the distributed run joined once). The persistent XLA cache may live in gs:// (a
  preempted VM loses its disk): the workers write their compiled train steps there."""
  env, bucket = pod
  out = _run(env, tmp_path, "--mode=demo", "--config=configs/tiny.py:steps=2",
             f"--workdir={bucket}/demo", f"--config.compilation_cache_dir={bucket}/xla_cache")
  assert "gap teacher - student" in out and out.count("data:  MRPC") == 1
  assert _summary(f"{bucket}/demo/teacher")["mode"] == "finetune"
  assert _summary(f"{bucket}/demo/student")["mode"] == "prune"
  cached = [p.name for p in paths.path(f"{bucket}/xla_cache").iterdir()]
  assert sum(name.startswith("jit_train_step") for name in cached) >= 2, cached
