"""The trainer and CLI end to end on the tiny config: finetune -> prune -> eval, NaN stop,
corrupted checkpoints, and one-line CLI errors. (The exact resume after SIGTERM and
SIGKILL: tests/test_gcs.py, on a gs:// work directory.)"""

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import cpu_env
from test_multiprocess import STEPS
from jaxprune import checkpoint
from jaxprune import config as config_lib
from jaxprune import trainer

ROOT = Path(__file__).resolve().parents[1]


def config_module(name: str):
  """The module of ``configs/<name>``, loaded from its file as config_flags does."""
  spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(arg: str | None = None):
  return config_module("tiny.py").get_config(arg)


@pytest.fixture(scope="module")
def teacher_dir(one_process_prune_run):
  """The tiny teacher of conftest's reference run (12 finetune steps), shared: read only."""
  _, reference_workdir, _ = one_process_prune_run
  workdir = reference_workdir.parent / "teacher"
  assert json.loads((workdir / "summary.json").read_text())["steps"] == 12
  return workdir


@pytest.mark.slow
def test_finetune_prune_eval_end_to_end(teacher_dir, tmp_path):
  t0 = time.time()
  config = tiny_config("sparsity=0.75")
  config.teacher = str(teacher_dir)
  config.tensorboard = config.plot = True  # configs/tiny.py turns them off
  summary = trainer.train_and_evaluate(config, tmp_path / "student", "prune", progress=False)
  assert summary["encoder_sparsity"] == pytest.approx(0.75)
  assert summary["selected"]["sparsity"] == pytest.approx(0.75)  # best among final-sparsity evals
  assert set(summary["teacher_scores"]) == {"f1", "accuracy"}
  rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").open()]
  kinds = {r["kind"] for r in rows}
  assert kinds == {"teacher_eval", "train", "eval", "prune_event"}
  events = [r for r in rows if r["kind"] == "prune_event"]
  assert len(events) == 4 and events[-1]["total"] == pytest.approx(0.75)
  # configs/tiny.py has one layer (test_masks.py counts layers of a 2-layer model).
  assert all(set(e) >= {"layer_0", "total"} for e in events)
  train_rows = [r for r in rows if r["kind"] == "train"]
  assert {"loss", "attention_loss", "hidden_loss", "prediction_loss", "sparsity", "grad_norm",
          "learning_rate"} <= set(train_rows[-1])
  for name in ("hf/config.json", "hf/model.safetensors", "hf/vocab.txt", "run.png",
               "summary.json", "model.sparse.safetensors"):
    assert (tmp_path / "student" / name).is_file(), name
  assert list((tmp_path / "student" / "tb").iterdir())
  # The exported student has 75% zeros in its encoder matrices; eval mode scores it.
  from jaxprune import masks, models
  _, params, _ = models.from_pretrained(tmp_path / "student" / "hf")
  assert masks.sparsity_report(params, masks.BERT_ENCODER_MATRICES).sparsity == pytest.approx(0.75)
  scores = trainer.evaluate_checkpoint(config, tmp_path / "student")
  assert scores == pytest.approx(summary["selected"]["scores"])
  print(f"tiny prune + eval: {time.time() - t0:.1f} s")


def _cli(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "jaxprune.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def _final_state(workdir: Path, step: int):
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  return jax.tree_util.tree_flatten_with_path(state)[0]


def interrupt(args: list[str], workdir, sig: int, after_step: int, timeout: float = 240,
              env: dict | None = None):
  """Starts the CLI and sends ``sig`` once ``metrics.jsonl`` shows ``after_step`` (read
  through jaxprune.paths, so ``workdir`` may be gs://); returns (exit code, stderr)."""
  from jaxprune import paths
  proc = subprocess.Popen([sys.executable, "-m", "jaxprune.main", *args,
                           f"--workdir={workdir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
  deadline = time.time() + timeout
  metrics = paths.path(f"{workdir}/metrics.jsonl")
  while time.time() < deadline and proc.poll() is None:
    if metrics.is_file() and any(json.loads(l)["step"] >= after_step and
                                 json.loads(l)["kind"] == "train"
                                 for l in metrics.read_text().splitlines() if l.strip()):
      break
    time.sleep(0.05)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  done = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"]
  assert max(r["step"] for r in done) < STEPS, "the run finished before it was interrupted"
  return proc.returncode, stderr


def assert_same_states(a: dict, b: dict) -> None:
  """Two checkpoints' arrays (``test_multiprocess._checkpoint``) are bitwise equal."""
  assert list(a) == list(b)
  assert any("masks" in name for name in a), list(a)[:10]
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.slow
def test_bfloat16_mixed_precision_tracks_float32(teacher_dir, tmp_path):
  """40 prune+distill steps with config.precision=bfloat16 follow the float32 losses
  (measured on the 2-core AMD CPU: median relative difference 0.06%, max 0.10%; 100
  steps gave 0.05% and 0.11%; asserted with 8-10x margin), keep float32 params and
  optimizer state, and the exact sparsity."""
  losses, summaries = {}, {}
  for precision in ("float32", "bfloat16"):
    config = tiny_config("steps=40,sparsity=0.8")
    config.teacher, config.precision = str(teacher_dir), precision
    config.train.checkpoint_every = config.train.eval_every = 40
    summaries[precision] = trainer.train_and_evaluate(config, tmp_path / precision, "prune",
                                                      progress=False)
    rows = [json.loads(l) for l in (tmp_path / precision / "metrics.jsonl").open()]
    losses[precision] = np.array([r["loss"] for r in rows if r["kind"] == "train"])
  fp32, bf16 = losses["float32"], losses["bfloat16"]
  assert len(fp32) == len(bf16) == 40 and np.all(np.isfinite(bf16))
  relative = np.abs(bf16 - fp32) / fp32
  print(f"bf16 vs fp32 loss: median {np.median(relative):.4f}, max {relative.max():.4f}")
  assert np.median(relative) < 0.005 and relative.max() < 0.01, relative
  assert not np.allclose(bf16, fp32, rtol=1e-6)  # it did compute in bfloat16
  assert summaries["bfloat16"]["encoder_sparsity"] == summaries["float32"]["encoder_sparsity"]
  for path, x in _final_state(tmp_path / "bfloat16", 40):
    if np.issubdtype(x.dtype, np.floating):
      assert x.dtype == np.float32, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(teacher_dir, tmp_path):
  config = tiny_config()
  config.teacher = str(teacher_dir)
  config.train.lr = 1e30  # the params overflow within a few steps
  config.train.optimizer = "bert_adam"
  config.train.checkpoint_every = 1  # step 1's loss is finite: its checkpoint must survive
  with pytest.raises(trainer.TrainingError, match="loss became"):
    trainer.train_and_evaluate(config, tmp_path / "nan", "prune", progress=False)
  rows = [json.loads(l) for l in (tmp_path / "nan" / "metrics.jsonl").open()]
  bad_step = max(r["step"] for r in rows if r["kind"] == "train") + 1
  steps = checkpoint.Checkpointer(tmp_path / "nan" / "checkpoints").steps()
  assert steps, "no good checkpoint was written before the NaN"
  assert all(s < bad_step for s in steps)


@pytest.mark.slow
def test_the_loop_waits_for_the_device_only_at_log_eval_and_checkpoint_steps(
    teacher_dir, tmp_path, monkeypatch):
  """The host queues steps without fetching anything between log, eval and checkpoint
  steps: implicit device-to-host transfers (``float(x)``, ``np.asarray(x)``) are
  disallowed for the whole run, and explicit ``jax.device_get`` calls are recorded
  against the step just dispatched. Mask events are counted on the device too.
  A loop that fetched its metrics (or the masks) at every step fails this test."""
  config = tiny_config("steps=20,sparsity=0.5")
  config.teacher = str(teacher_dir)
  config.train.update(log_every=5, checkpoint_every=10, eval_every=20)
  calls: list[int | str] = []
  make_step = trainer.sharding.jit_train_step

  def recorded_jit_train_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def run(*a, **k):
      calls.append(len([c for c in calls if c != "get"]) + 1)
      return step(*a, **k)
    return run

  device_get = jax.device_get

  def recorded_device_get(x):
    calls.append("get")
    return device_get(x)

  monkeypatch.setattr(trainer.sharding, "jit_train_step", recorded_jit_train_step)
  monkeypatch.setattr(jax, "device_get", recorded_device_get)
  with jax.transfer_guard_device_to_host("disallow"):
    trainer.train_and_evaluate(config, tmp_path / "s", "prune", progress=False)
  fetched_after = {c for c, n in zip(calls, calls[1:]) if c != "get" and n == "get"}
  assert fetched_after == {5, 10, 15, 20}, calls
  rows = [json.loads(l) for l in (tmp_path / "s" / "metrics.jsonl").open()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == [5, 10, 15, 20]
  events = trainer.recipe.build(config, "prune", 20).sparsity.event_steps
  assert [r["step"] for r in rows if r["kind"] == "prune_event"] == list(events)


@pytest.mark.parametrize("field,value", [
    ("prune.sparsity", 0.95), ("prune.schedule", "constant"), ("train.num_steps", 13),
    ("train.lr", 0.5), ("distill.hidden_weight", 0.0), ("task", "RTE"),
    ("model", "minilm-l6"), ("seed", 1), ("max_seq_len", 64)])
def test_check_resume_names_the_first_training_field_that_changed(field, value):
  saved = json.loads(tiny_config().to_json_best_effort())
  config = tiny_config()
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(config_lib.ConfigError, match=rf"trained with {re.escape(field)}="):
    config_lib.check_resume(saved, config, "prune")


@pytest.mark.parametrize("field,value", [
    ("train.eval_every", 3), ("train.log_every", 5), ("train.checkpoint_every", 7),
    ("mesh_shape", (2, 2)), ("keep_checkpoints", 5), ("glue_dir", "/elsewhere"),
    ("preemption_check_every", 1), ("finetune.lr", 0.5), ("coordinator_address", "auto")])
def test_check_resume_lets_cadence_paths_and_placement_change(field, value):
  """What may change (config.RESUMABLE_CHANGES), and the teacher's section in a student's
  run."""
  saved = json.loads(tiny_config().to_json_best_effort())
  config = tiny_config()
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  config_lib.check_resume(saved, config, "prune")


@pytest.mark.slow
def test_resuming_under_another_training_config_is_refused(one_process_prune_run, tmp_path):
  """A finished 4-device run's workdir resumed with another sparsity: exit 2, one line
  naming the field and its saved value, nothing written. With only the eval and log
  cadence and the mesh changed, it resumes (re-evaluates the finished run)."""
  import shutil
  args, reference_workdir, _ = one_process_prune_run
  workdir = tmp_path / "run"
  shutil.copytree(reference_workdir, workdir)
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  out = _cli(*args, f"--workdir={workdir}", "--config.prune.sparsity=0.5", env=cpu_env(4))
  assert out.returncode == 2, out.stderr[-2000:]
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith("jaxprune: error: this workdir's checkpoints were trained with "
                         "prune.sparsity=0.8, the command says 0.5"), line
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  ok = _cli(*args, f"--workdir={workdir}", "--config.train.eval_every=3",
            "--config.train.log_every=4", "--config.mesh_shape=(2,2)", env=cpu_env(4))
  assert ok.returncode == 0, ok.stderr[-2000:]


@pytest.mark.slow
def test_the_second_run_compiles_its_train_step_from_the_persistent_cache(tmp_path):
  """config.compilation_cache_dir: the first run writes the compiled train step there;
  a second run of the same shapes (a resumed preempted run is one) loads it (a miss
  would write a second entry)."""
  cache = tmp_path / "xla_cache"
  entries = []
  for run in ("first", "second"):
    out = _cli("--mode=finetune", "--config=configs/tiny.py:steps=2",
               f"--workdir={tmp_path / run}", f"--config.compilation_cache_dir={cache}",
               env=cpu_env(1))
    assert out.returncode == 0, out.stderr[-2000:]
    entries.append(sorted(p.name for p in cache.iterdir()))
  assert any(name.startswith("jit_train_step") for name in entries[0]), entries[0]
  assert entries[1] == entries[0]


def test_preemption_is_agreed_every_check_every_steps(monkeypatch):
  """With several processes the signal flag is all-gathered only on multiples of
  ``check_every`` (a collective per step would sync the host); with one, never."""
  from jax.experimental import multihost_utils
  gathered = []
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: gathered.append(int(x)) or np.array([x, 0]))
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda step: False)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with checkpoint.PreemptionGuard(check_every=4) as guard:
    answers = [guard.requested(step) for step in range(1, 6)]
    os.kill(os.getpid(), signal.SIGTERM)
    answers += [guard.requested(step) for step in range(6, 10)]
  assert answers == [False] * 7 + [True, False]  # agreed at step 8, the next multiple
  assert gathered == [0, 1]
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  with checkpoint.PreemptionGuard(check_every=4) as guard:
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested(1)
  assert gathered == [0, 1]


def test_corrupted_latest_checkpoint_falls_back(tmp_path, caplog):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3, async_save=False)
  state = {"w": np.arange(6.0).reshape(2, 3), "m": np.ones((2, 3), bool)}
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x: x * step, state), {"data": {"epoch": step}})
  ckpt.wait()
  for f in (tmp_path / "2" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.Checkpointer(tmp_path).restore_latest(checkpoint.abstract(state))
  assert restored is not None
  got, meta = restored
  assert meta == {"data": {"epoch": 1}}
  np.testing.assert_array_equal(got["w"], state["w"])
  assert "unreadable" in caplog.text


def test_a_save_that_fails_in_the_background_is_dropped_and_the_next_one_kept(
    tmp_path, caplog, monkeypatch):
  """A background commit that times out (orbax gives up after 20 minutes: seen when a
  study process was paused that long) used to make the next save raise it and end the
  run. The failed step is not kept, a warning says so, and saving goes on."""
  from orbax.checkpoint._src.futures import future
  result = future.ChainedFuture.result
  failures = [TimeoutError("ChainedFuture completed 3/4 futures but timed out")]

  def times_out_once(self, timeout=None):
    if failures:
      raise failures.pop()
    return result(self, timeout=timeout)

  monkeypatch.setattr(future.ChainedFuture, "result", times_out_once)
  ckpt = checkpoint.Checkpointer(tmp_path)
  state = {"w": np.arange(6.0).reshape(2, 3)}
  with caplog.at_level(logging.WARNING):
    ckpt.save(2, state, {"data": {"epoch": 2}})  # its commit fails in the background
    ckpt.save(4, jax.tree.map(lambda x: 2 * x, state), {"data": {"epoch": 4}})
    ckpt.close()
  assert not failures, "the simulated failure was never hit"
  assert "a save failed in the background and is not kept (TimeoutError" in caplog.text
  assert ckpt.steps() == [4]
  got, meta = checkpoint.Checkpointer(tmp_path).restore_latest(checkpoint.abstract(state))
  np.testing.assert_array_equal(got["w"], 2 * state["w"])
  assert meta == {"data": {"epoch": 4}}


def test_small_replicated_arrays_are_saved_whole_and_orbax_global_registry_is_left(tmp_path):
  import orbax.checkpoint as ocp
  from jax.sharding import NamedSharding, PartitionSpec
  handler = checkpoint._state_handler()
  arrays = handler._handler_impl._type_handler_registry.get(jax.Array)
  assert arrays._min_slice_bytes_for_replica_parallel == checkpoint.MIN_REPLICA_SLICE_BYTES
  assert ocp.type_handlers.get_type_handler(jax.Array) is not arrays
  assert ocp.type_handlers.get_type_handler(jax.Array)._min_slice_bytes_for_replica_parallel is None
  # A replicated array (every device holds all of it) and a sharded one round-trip.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
  n = len(jax.devices())
  state = {"small": jax.device_put(np.arange(8.0), NamedSharding(mesh, PartitionSpec())),
           "split": jax.device_put(np.arange(4.0 * n).reshape(n, 4),
                                   NamedSharding(mesh, PartitionSpec("d")))}
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(3, state, {"data": {}})
  ckpt.wait()
  got, _ = ckpt.restore(3, checkpoint.abstract(state))
  for key in state:
    np.testing.assert_array_equal(got[key], state[key])
    assert got[key].sharding == state[key].sharding


@pytest.mark.parametrize("override, message", [
    ("--config.prune.sparsity=1.0", "prune.sparsity=1.0: expected a value in [0, 1)"),
    ("--config.task=NOPE", "unknown GLUE task 'NOPE'"),
    ("--config.distill.mean_over=pairs", "distill.mean_over='pairs': expected 'all' or 'tokens'"),
    ("--config.teacher=/nonexistent/teacher", "teacher /nonexistent/teacher: no such directory"),
])
def test_cli_errors_are_one_line_exit_2(override, message, tmp_path):
  result = _cli("--mode=prune", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                "--config.teacher=/nonexistent/teacher", override)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("jaxprune: error:")]
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_cli_batch_not_divisible_by_data_parallel(teacher_dir, tmp_path):
  result = _cli("--mode=prune", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                f"--config.teacher={teacher_dir}", "--config.train.batch_size=6",
                env=cpu_env(4))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "batch_size=6 is not divisible by the 4 data-parallel devices" in result.stderr


def test_teacher_vocab_mismatch(teacher_dir, tmp_path):
  from jaxprune import models
  model, params, cfg = models.from_config("minilm-l6", num_labels=2, vocab_size=100,
                                          num_hidden_layers=2, hidden_size=32,
                                          num_attention_heads=4, intermediate_size=64)
  models.export_hf(params, cfg, tmp_path / "other-vocab")
  config = tiny_config()
  config.teacher = str(tmp_path / "other-vocab")
  with pytest.raises(config_lib.ConfigError, match="teacher vocab_size 100 != student"):
    trainer.train_and_evaluate(config, tmp_path / "run", "prune", progress=False)


def test_teacher_label_count_mismatch(teacher_dir, tmp_path):
  from jaxprune import models
  config = tiny_config()
  config.teacher = str(teacher_dir)  # an MRPC teacher: 2 outputs
  config.task = "STS-B"  # regression: 1 output
  with pytest.raises(models.CheckpointError, match=r"classifier/kernel \(32, 2\) \(expected \(32, 1\)\)"):
    trainer.train_and_evaluate(config, tmp_path / "run", "prune", progress=False)


def test_missing_glue_dir_says_how_to_get_it(tmp_path):
  from jaxprune import cli
  from jaxprune.data import DataError
  config = tiny_config()
  config.glue_dir = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match="GLUE download script"):
    cli.demo(config, tmp_path / "demo")


def test_parse_arg_rejects_unknown_keys():
  with pytest.raises(config_lib.ConfigError, match="config argument 'stpes'"):
    tiny_config("stpes=3")
  assert tiny_config("steps=4,sparsity=0.25").prune.sparsity == 0.25


@pytest.mark.parametrize("name, arg", [("tiny.py", None), ("demo.py", None),
                                       ("minilm_glue.py", "task=rte,sparsity=0.95"),
                                       ("reference.py", "task=qnli")])
def test_every_config_loads_and_validates(name, arg):
  module = config_module(name)
  config = module.get_config(arg) if arg else module.get_config()
  assert module.__doc__ and "jaxprune --mode=" in module.__doc__
  config.teacher = "some-teacher"
  config_lib.validate(config, "prune")


@pytest.mark.parametrize("arg, weights", [("task=rte", 0.0), ("task=rte,terms=all", 1.0),
                                          ("task=mrpc", 1.0), ("task=mrpc,terms=prediction", 0.0)])
def test_glue_preset_distils_the_prediction_only_where_that_measured_best(arg, weights):
  module = config_module("minilm_glue.py")
  config = module.get_config(arg)
  assert (config.distill.attention_weight, config.distill.hidden_weight) == (weights, weights)
  assert config.distill.prediction_weight == 1.0
  with pytest.raises(config_lib.ConfigError, match="terms='none'"):
    module.get_config("task=rte,terms=none")


@pytest.mark.parametrize("arg,epochs", [
    ("task=mrpc", 10.0), ("task=mrpc,sparsity=0.95", 20.0), ("task=cola,sparsity=0.95", 40.0),
    ("task=mrpc,sparsity=0.95,schedule=plain", 10.0), ("task=mrpc,schedule=long", 20.0),
    ("task=mrpc,sparsity=0.95,epochs=3", 3.0)])
def test_glue_preset_trains_twice_as_long_from_95_percent(arg, epochs):
  module = config_module("minilm_glue.py")
  config = module.get_config(arg)
  assert config.train.epochs == epochs
  assert config.prune.ramp_fraction == module.get_config("task=mrpc").prune.ramp_fraction
  with pytest.raises(config_lib.ConfigError, match="schedule='short'"):
    module.get_config("task=mrpc,schedule=short")


@pytest.mark.parametrize("arg,loss", [
    ("task=mrpc", "mse"), ("task=mrpc,sparsity=0.95", "kl"), ("task=cola,sparsity=0.97", "kl"),
    ("task=mrpc,sparsity=0.95,attention=mse", "mse"), ("task=mrpc,attention=kl", "kl")])
def test_glue_preset_distils_attention_distributions_from_95_percent(arg, loss):
  module = config_module("minilm_glue.py")
  assert module.get_config(arg).distill.attention_loss == loss
  with pytest.raises(config_lib.ConfigError, match="attention='l2'"):
    module.get_config("task=mrpc,attention=l2")


def test_reference_config_is_the_reference():
  c = config_module("reference.py").get_config("task=mrpc")
  assert (c.train.optimizer, c.train.lr, c.train.batch_size, c.train.epochs) == (
      "bert_adam", 3e-5, 32, 12.0)
  assert c.prune.schedule == "reference" and c.prune.ramp_fraction == 1.0
  assert c.prune.keep_ties and c.distill.teacher_dropout and c.distill.classifier_relu
  assert c.trim_padding_to == 0 and c.max_seq_len == 128 and c.seed == 42


@pytest.mark.slow
def test_student_on_augmented_data_with_labels_and_a_prediction_only_phase(teacher_dir,
                                                                           tmp_path):
  config = tiny_config()
  config.teacher = str(teacher_dir)
  config.augment_copies = 1
  config.distill.label_weight = 0.5
  config.distill.intermediate_until = 0.5
  summary = trainer.train_and_evaluate(config, tmp_path / "s", "prune", progress=False)
  aug = tmp_path / "s" / "augmented" / "MRPC" / "train_aug.tsv"
  assert aug.is_file() and sum(1 for _ in aug.open()) > config.train_subsample
  assert set(summary["baseline_scores"]) == {"f1", "accuracy"}
  assert isinstance(summary["warnings"], list)
  rows = [json.loads(l) for l in (tmp_path / "s" / "metrics.jsonl").open()]
  train_rows = [r for r in rows if r["kind"] == "train"]
  assert all("labels_loss" in r for r in train_rows)
  late = train_rows[-1]  # step 12 of 12: predictions and labels only
  assert late["loss"] == pytest.approx(late["prediction_loss"] + 0.5 * late["labels_loss"],
                                       rel=1e-4)


@pytest.mark.slow
def test_majority_baseline_comes_from_the_task_not_the_augmented_rows(teacher_dir, glue_dir,
                                                                       tmp_path):
  """An augmented split can flip the label mix (RTE x4 does): the summary's baseline, and
  so its collapse warning, must still be the task's own majority class."""
  config = tiny_config()
  config.teacher, config.augment_copies = str(teacher_dir), 1
  config.aug_dir = str(tmp_path / "aug")
  # A ready augmented split (its stamp matches, so it is used as is): every row says
  # "not a paraphrase", where MRPC's training set is 68% paraphrases.
  rows = (Path(glue_dir) / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
  flipped = [rows[0]] + ["0" + r[r.index("\t"):] for r in rows[1:200]]
  (tmp_path / "aug" / "MRPC").mkdir(parents=True)
  (tmp_path / "aug" / "MRPC" / "train_aug.tsv").write_text("\n".join(flipped) + "\n")
  (tmp_path / "aug" / "MRPC" / "augment.json").write_text(json.dumps(
      {"copies": 1, "seed": config.seed, "model": "minilm-l6", "source": "tsv"}))
  summary = trainer.train_and_evaluate(config, tmp_path / "s", "prune", progress=False)
  used = (tmp_path / "aug" / "MRPC" / "train_aug.tsv").read_text().splitlines()[1:]
  assert len(used) == 199 and all(r.startswith("0\t") for r in used)  # not remade
  # Always "paraphrase" has F1 > 0.5 on MRPC dev; always "not" (the flipped rows'
  # majority) would have F1 0.
  assert summary["baseline_scores"]["f1"] > 0.5, summary["baseline_scores"]
