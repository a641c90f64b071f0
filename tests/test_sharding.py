"""Sharding: derived shardings (in process) and the same steps on 8 fake CPU devices.

The 8-device runs need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before
jax starts, so they run in subprocesses (tests/multiprocess_worker.py, one per mesh) while this
process computes the single-device reference.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import cpu_env, shared_run
import multiprocess_worker as worker
from jaxprune import masks, optim, sharding, transforms
from jaxprune.models import bert

WORKER = Path(__file__).with_name("multiprocess_worker.py")
MESHES = ("8x1", "4x2")
TIMEOUT_S = 300


def launch_worker(out: Path, meshes: str, devices: int, *extra: str) -> subprocess.Popen:
  """Starts the worker with ``devices`` fake CPU devices; output goes to a log file."""
  env = cpu_env(devices)
  with open(out / f"worker_{meshes}_{'_'.join(extra[-1:])}.log", "w") as log:
    return subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), "--meshes",
                             meshes, *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=WORKER.parent.parent)


def wait(procs: list[subprocess.Popen], out: Path) -> None:
  """Waits for every worker (killing all on timeout) and fails with their logs."""
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"worker timed out after {TIMEOUT_S}s:\n" + logs(out))
  if any(p.returncode for p in procs):
    pytest.fail(f"worker failed ({[p.returncode for p in procs]}):\n" + logs(out))


def logs(out: Path) -> str:
  return "\n".join(f"--- {f.name}\n{f.read_text()[-4000:]}" for f in sorted(out.glob("*.log")))


def load(out: Path, name: str) -> tuple[dict, dict]:
  return dict(np.load(out / f"{name}.npz")), json.loads((out / f"{name}.json").read_text())


def assert_matches_reference(arrays: dict) -> None:
  """Metrics and final params equal the single-device run's (relative 1e-5)."""
  state, metrics, _ = worker.reference()
  expected = worker.result_arrays(metrics, state.params)
  assert sorted(arrays) == sorted(expected)
  for name, want in expected.items():
    # Per leaf, relative to the leaf's scale (a tiny element may differ at 1e-7).
    np.testing.assert_allclose(arrays[name], want, rtol=1e-5,
                               atol=1e-5 * float(np.max(np.abs(want))), err_msg=name)
    if name.startswith("param/"):  # the same weights are pruned
      np.testing.assert_array_equal(arrays[name] == 0, want == 0, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
  """The 8-device runs, once per session: the tests using them are marked slow, and
  conftest deals slow tests to both xdist workers, which would each run them."""
  def build(out: Path) -> None:
    procs = [launch_worker(out, mesh, 8) for mesh in MESHES]  # compiles run in parallel
    try:
      worker.reference()  # meanwhile, in this process (unless already done)
    finally:
      wait(procs, out)

  out = shared_run(tmp_path_factory, "sharding", build)
  return {m: load(out, f"mesh{m}_p0") for m in MESHES}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_same_steps_on_8_devices_match_one_device(runs, mesh):
  arrays, checks = runs[mesh]
  assert_matches_reference(arrays)
  assert checks["compiles"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_masks_and_moments_are_sharded_like_their_params(runs, mesh):
  _, checks = runs[mesh]
  assert checks["mask_mismatch"] == [] and checks["mu_mismatch"] == []
  assert checks["mask_specs"] == checks["param_specs"]
  query = "bert/encoder/layer/0/attention/self/query/kernel"
  assert checks["mask_specs"][query] == "P(None, 'model')"
  assert checks["state_step_spec"] == "P()" and checks["state_rng_spec"] in ("P()", "P(None,)")
  # An odd vocabulary cannot be split in 2: that dimension is replicated.
  assert checks["odd_vocab_spec"] == ("P(None, None)" if mesh == "4x2" else "P('model', None)")


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_sparsity_follows_the_schedule(runs, mesh):
  arrays, checks = runs[mesh]
  np.testing.assert_allclose(arrays["metric/sparsity"], checks["scheduled"], atol=1e-7)
  assert arrays["metric/sparsity"][-1] >= worker.TARGET_SPARSITY


# ------------------------------------------------------------- in process, 1 device


def tiny_params():
  model = bert.BertForSequenceClassification(bert.BertConfig.tiny(num_hidden_layers=1))
  return model, worker.random_params(model, 0)


def test_make_mesh_resolves_minus_one_and_validates():
  n = jax.device_count()
  mesh = sharding.make_mesh((-1, 1))
  assert dict(mesh.shape) == {"data": n, "model": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  for bad in [(n + 1, 1), (-1, -1), (1,)]:
    with pytest.raises(ValueError):
      sharding.make_mesh(bad)


def test_param_shardings_follow_the_logical_rules():
  model, params = tiny_params()
  mesh = sharding.make_mesh((-1, 1))
  specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(
      bert.logical_axes(model), mesh, params))
  layer = specs["bert"]["encoder"]["layer"]["0"]
  assert layer["attention"]["self"]["query"]["kernel"] == P(None, "model")
  assert layer["attention"]["output"]["dense"]["kernel"] == P("model", None)
  assert layer["intermediate"]["dense"]["kernel"] == P(None, "model")
  assert layer["output"]["dense"]["kernel"] == P("model", None)
  assert specs["bert"]["embeddings"]["word_embeddings"]["embedding"] == P("model", None)
  assert specs["bert"]["embeddings"]["LayerNorm"]["scale"] == P(None)
  assert specs["classifier"]["kernel"] == P(None, None)


def test_mirror_shardings_places_optimizer_state_like_params():
  model, params = tiny_params()
  mesh = sharding.make_mesh((-1, 1))
  param_sh = sharding.param_shardings(bert.logical_axes(model), mesh, params)
  matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  tx = optax.chain(optim.bert_adam(1e-3), optax.masked(optax.adam(1e-3), matrices),
                   transforms.prune_by_magnitude(0.5, masks.BERT_ENCODER_MATRICES))
  opt_shapes = jax.eval_shape(tx.init, params)
  opt_sh = sharding.mirror_shardings(opt_shapes, params, param_sh, mesh)
  want = worker.flatten(jax.tree.map(lambda s: s.spec, param_sh))
  got = worker.flatten(jax.tree.map(lambda s: s.spec, opt_sh))
  mirrored = 0
  for path, spec in got.items():
    suffix = [p for p in want if path.endswith("/" + p)]
    if suffix:  # mu, nu (twice), masks: exactly the param's spec
      assert spec == want[suffix[0]], path
      mirrored += 1
    else:  # counts
      assert spec == P(), path
  n = len(want)
  # bert_adam mu+nu, the masked adam's mu+nu (matrices only), prune masks.
  assert mirrored == 2 * n + 2 * sum(np.ndim(x) > 1 for x in jax.tree.leaves(params)) + n


def test_mirror_shardings_falls_back_to_unambiguous_shapes():
  mesh = sharding.make_mesh((-1, 1))
  params = {"a": np.zeros((4, 8)), "b": np.zeros((8, 4)), "c": np.zeros((8, 4))}
  sh = {"a": NamedSharding(mesh, P(None, "model")), "b": NamedSharding(mesh, P("model")),
        "c": NamedSharding(mesh, P(None, "model"))}
  tree = [np.zeros((4, 8)), np.zeros((8, 4)), np.zeros(()), np.zeros((3,))]
  specs = [s.spec for s in sharding.mirror_shardings(tree, params, sh, mesh)]
  # (4, 8) is a's shape alone; (8, 4) is ambiguous (b, c differ); the rest: no param.
  assert specs == [P(None, "model"), P(), P(), P()]


def test_global_batch_single_process_is_the_batch():
  mesh = sharding.make_mesh((-1, 1))
  batch = worker.setup()["batches"][0]
  out = sharding.global_batch(batch, mesh)
  for k, v in batch.items():
    np.testing.assert_array_equal(np.asarray(out[k]), v)
    assert out[k].sharding.spec == P("data")


def test_initialize_distributed_is_a_no_op_without_coordinator():
  assert sharding.initialize_distributed("", 1, 0) is False
  with pytest.raises(ValueError, match="coordinator"):
    sharding.initialize_distributed("", 2, 0)
