"""Two processes on 127.0.0.1 (two fake CPU devices each) train like one process.

tests/multiprocess_worker.py runs on a 4 (data) x 1 mesh over the 4 global devices,
interleaved by process as on a TPU slice (tests/interleaved_devices.py): each process
feeds only its rows of every batch (``sharding.batch_rows``, two separate blocks here)
through ``jax.make_array_from_process_local_data``, and must end with the single-device
run's losses and params. The CLI's tiny prune job runs on 2 processes interleaved
(SIGTERM, then SIGKILL, to one process), then resumes in process order on a 2 (data) x 2
(model) mesh to the 1-process x 4-device run's final state.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cpu_env
import multiprocess_worker as worker
from test_sharding import assert_matches_reference, launch_worker, load, wait
from test_sharding import logs as worker_logs

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("order,mesh", [("interleaved", "4x1")])
def test_two_processes_match_one_process(tmp_path, order, mesh):
  """Devices interleaved by process as on a TPU slice, on a 4x1 mesh: the data axis goes
  p0, p1, p0, p1, so process 0's rows of each batch are two separate blocks. (Devices in
  process order on a 2x2 mesh: the last CLI run of the SIGTERM-then-SIGKILL test
  below, against the same 1-process reference.)"""
  coordinator = f"127.0.0.1:{free_port()}"
  extra = ["--interleave"] if order == "interleaved" else []
  procs = [launch_worker(tmp_path, mesh, 2, "--coordinator", coordinator, *extra,
                         "--num-processes", "2", "--process-id", str(i)) for i in range(2)]
  try:
    worker.reference()  # meanwhile, in this process
  finally:
    wait(procs, tmp_path)
  results = [load(tmp_path, f"mesh{mesh}_p{i}") for i in range(2)]
  half = worker.GLOBAL_BATCH // 2
  expected_rows = ([[0, 1, 4, 5], [2, 3, 6, 7]] if order == "interleaved"
                   else [list(range(half)), list(range(half, 2 * half))])
  assert [checks["rows"] for _, checks in results] == expected_rows
  for arrays, checks in results:
    assert checks["process_count"] == 2
    assert_matches_reference(arrays)
    assert checks["mask_mismatch"] == [] and checks["mu_mismatch"] == []
  # Both processes report the same (replicated) metrics.
  for name, value in results[0][0].items():
    np.testing.assert_array_equal(results[1][0][name], value, err_msg=name)


def _start(args: list[str], devices: int, log: Path, interleave: bool = False,
           main: list[str] | None = None) -> subprocess.Popen:
  """The CLI in a subprocess; ``interleave``: devices listed as on a TPU slice; ``main``:
  another entry point (a test wrapper of the CLI)."""
  main = main or ([str(ROOT / "tests" / "interleaved_devices.py")] if interleave
                  else ["-m", "jaxprune.main"])
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, *main, *args], cwd=ROOT,
                            env=cpu_env(devices), stdout=out, stderr=subprocess.STDOUT)


def _checkpoint(workdir: Path, step: int) -> dict:
  """A checkpoint's arrays on this process's one device (saved on 4, from 1 or 2 hosts)."""
  import jax
  import orbax.checkpoint as ocp
  path = workdir / "checkpoints" / str(step) / "state"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  meta = ocp.StandardCheckpointer().metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        meta.tree if hasattr(meta, "tree") else meta)
  state = ocp.StandardCheckpointer().restore(path, target)
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


STEPS = 12
# A checkpoint every 2 steps (configs/tiny.py: 6), so that a run stopped or killed
# mid-way resumes from a step of its own.
BASE = ["--config=configs/tiny.py:steps=12,sparsity=0.8", "--config.trim_padding_to=8",
        "--config.group_by_length=2", "--config.train.checkpoint_every=2"]


def _two_processes(args: list[str], workdir: Path, logs: Path, interleave: bool = False
                   ) -> list[subprocess.Popen]:
  coordinator = f"127.0.0.1:{free_port()}"
  return [_start([*args, f"--workdir={workdir}", f"--config.coordinator_address={coordinator}",
                  "--config.num_processes=2", f"--config.process_id={i}"], 2,
                 logs / f"{workdir.name}_{i}.log", interleave) for i in range(2)]


def _train_rows(workdir: Path) -> list[dict]:
  metrics = workdir / "metrics.jsonl"
  if not metrics.is_file():
    return []
  return [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"]


def _wait_for_step(procs: list[subprocess.Popen], workdir: Path, step: int, logs: Path) -> None:
  deadline = time.time() + 300
  while not any(r["step"] >= step for r in _train_rows(workdir)):
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      pytest.fail(f"no step {step} in {workdir}/metrics.jsonl:\n" + worker_logs(logs))
    time.sleep(0.05)


def assert_matches_one_process(a: dict, b: dict) -> None:
  """Final masks identical; params within 1e-5 and Adam moments within 1e-4 (relative)."""
  assert a.keys() == b.keys()
  masks = [k for k in a if "masks" in k]
  assert masks
  for k in a:
    if np.issubdtype(a[k].dtype, np.floating):  # relative to the leaf's norm
      # Adam moments looser: the embedding gradients are sums in another order on 2
      # processes (observed up to 2e-5 relative on the word embeddings).
      relative = np.linalg.norm(b[k] - a[k]) / max(np.linalg.norm(a[k]), 1e-30)
      assert relative <= (1e-5 if k.startswith("['params']") else 1e-4), (k, relative)
    else:  # masks, counters
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_sigterm_then_sigkill_to_one_process_and_both_resume_to_the_one_process_result(
    one_process_prune_run, tmp_path):
  """The CLI's tiny prune job (padding trim and length grouping on) on 2 processes x 2
  CPU devices on 127.0.0.1, interrupted twice, then run to the end; it must end where
  the 1-process x 4-device run ended.

  1. Devices interleaved by process as on a TPU slice (each process loads two separate
     blocks of every batch). A preemption notice reaches only process 1: both save the
     same step, say so, exit with 75.
  2. The same command resumes from that step; process 1 is then killed (SIGKILL): process
     0 does not hang in the next collective; it exits within seconds with
     PEER_LOST_EXIT_CODE and one ``jaxprune: error:`` line.
  3. The same job on a 2 (data) x 2 (model) mesh with devices in process order (the
     checkpoints reshard), with process 1 unable to read the newest checkpoint (a
     transient read error, tests/unreadable_checkpoint.py): both restore the one before
     it and train from there. Deciding per process would have process 0 resume from the
     newest while process 1 trains from the older one (a hang).

  Process 0 writes each step's metrics row once, across the interruptions."""
  from jaxprune.sharding import PEER_LOST_EXIT_CODE
  args, _, reference = one_process_prune_run
  workdir = tmp_path / "two"
  # Every step agrees on a preemption notice (not every 10th): the run stops near the
  # signal, with steps left for the second interruption.
  interleaved = [*args, "--config.heartbeat_timeout=10", "--config.preemption_check_every=1"]
  procs = _two_processes(interleaved, workdir, tmp_path, interleave=True)
  _wait_for_step(procs, workdir, random.Random(os.getpid()).randint(3, 4), tmp_path)
  procs[1].send_signal(signal.SIGTERM)
  for p in procs:
    p.wait(timeout=300)
  assert [p.returncode for p in procs] == [75, 75], worker_logs(tmp_path)
  said = [re.findall(r"preempted at step (\d+); re-run", (tmp_path / f"two_{i}.log").read_text())
          for i in range(2)]
  assert said[0] == said[1] and len(said[0]) == 1, said
  step = int(said[0][0])
  assert step < STEPS, "the run finished before it was interrupted"
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  assert [r["step"] for r in rows if r["kind"] == "preempted"] == [step]
  assert (workdir / "checkpoints" / str(step)).is_dir()

  (tmp_path / "resumed").mkdir()
  procs = _two_processes(interleaved, workdir, tmp_path / "resumed", interleave=True)
  _wait_for_step(procs, workdir, step + 4, tmp_path / "resumed")  # a checkpoint after it
  procs[1].kill()
  start = time.time()
  try:
    procs[0].wait(timeout=60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("process 0 still runs 60 s after process 1 was killed")
  assert procs[0].returncode == PEER_LOST_EXIT_CODE, worker_logs(tmp_path / "resumed")
  assert time.time() - start < 30
  log = (tmp_path / "resumed" / "two_0.log").read_text()
  lines = [l for l in re.split(r"[\r\n]", log) if l.strip()]
  errors = [l[l.index("jaxprune:"):] for l in lines if "jaxprune:" in l]
  assert len(errors) == 1 and errors[0] == lines[-1][lines[-1].index("jaxprune:"):], lines[-5:]
  assert errors[0].startswith("jaxprune: error: process 0: lost another process of the run")
  assert "re-run the same command" in errors[0]
  before = [r["step"] for r in _train_rows(workdir)]
  assert before == list(range(1, before[-1] + 1)) and before[-1] < STEPS, before
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) >= 2 and steps[-1] < STEPS, steps
  newest, older = steps[-1], steps[-2]

  coordinator = f"127.0.0.1:{free_port()}"
  wait([_start([*args, "--config.mesh_shape=(2,2)", f"--workdir={workdir}",
                f"--config.coordinator_address={coordinator}", "--config.num_processes=2",
                f"--config.process_id={i}"], 2, tmp_path / f"rerun_{i}.log",
               main=[str(ROOT / "tests" / "unreadable_checkpoint.py"), str(newest)] if i else None)
        for i in range(2)], tmp_path)
  for i in range(2):
    log = (tmp_path / f"rerun_{i}.log").read_text()
    assert f"checkpoints/{newest} is unreadable on process(es) [1]" in log, log[-3000:]
  assert [r["step"] for r in _train_rows(workdir)] == before + list(range(older + 1, STEPS + 1))
  assert_matches_one_process(reference, _checkpoint(workdir, STEPS))
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["processes"] == 2 and summary["devices"] == 4
  assert summary["mesh"] == {"data": 2, "model": 2}
  logs = [(tmp_path / f"rerun_{i}.log").read_text() for i in range(2)]
  assert "[process 1]" in logs[1] or "[process 1]" not in logs[0]
  print(f"\npreempted at step {step}, killed after step {before[-1]}, resumed from step "
        f"{older} (step {newest} unreadable on process 1)")


# The CLI with process 1 reaching everything 3 s after process 0 (it joins the run late).
_LATE_PROCESS_1 = ["-c", """
import sys, time
from jaxprune import sharding
from jaxprune.main import run
join = sharding.initialize_distributed
def late(*args, **kwargs):
  joined = join(*args, **kwargs)
  import jax
  time.sleep(3 * jax.process_index())
  return joined
sharding.initialize_distributed = late
sys.argv[0] = "jaxprune"
run()
"""]


@pytest.mark.slow
def test_an_error_every_process_meets_ends_each_with_its_one_line_and_status_2(tmp_path):
  """``--mode=export`` of a work directory that does not exist, on 2 processes where
  process 1 gets there 3 s later: each prints its one ``jaxprune: error:`` line and exits
  2. Process 0 leaving at once would take the coordinator down and process 1 would abort
  (134) with a C++ trace, as on a pod worker where one host is slower."""
  coordinator = f"127.0.0.1:{free_port()}"
  procs = [_start(["--mode=export", f"--workdir={tmp_path / 'never-written'}",
                   "--config=configs/base.py", f"--config.coordinator_address={coordinator}",
                   "--config.num_processes=2", f"--config.process_id={i}"], 2,
                  tmp_path / f"run_{i}.log", main=_LATE_PROCESS_1) for i in range(2)]
  for p in procs:
    p.wait(timeout=120)
  assert [p.returncode for p in procs] == [2, 2], worker_logs(tmp_path)
  for i in range(2):
    lines = [l for l in (tmp_path / f"run_{i}.log").read_text().splitlines() if l.strip()]
    assert [l for l in lines if "jaxprune: error:" in l] == lines[-1:], lines[-5:]
    assert "never-written" in lines[-1]
