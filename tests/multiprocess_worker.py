"""Runs a few SparseBERT train steps on a device mesh and saves what they produced.

Launched by tests/test_sharding.py (one process, 8 fake CPU devices, meshes 8x1 and 4x2)
and tests/test_multiprocess.py (two processes on 127.0.0.1, two fake devices each). The
tests import it too: `reference` runs the same steps with plain ``jax.jit`` on the
pytest process's single device (computed once per session, shared by the test modules).

Each sharded run writes ``<out>/mesh<DxM>_p<process>.npz`` (every metric per step and
the final params, flattened by path) and a ``.json`` of checks that need the live
arrays (mask vs param shardings, sparsity per step).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      python tests/multiprocess_worker.py --out /tmp/r --meshes 8x1,4x2
  python tests/multiprocess_worker.py --out /tmp/r --meshes 2x2 \\
      --coordinator 127.0.0.1:12345 --num-processes 2 --process-id 0
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
import sys

import numpy as np

STEPS = 5
GLOBAL_BATCH = 8
SEQ_LEN = 16
TARGET_SPARSITY = 0.8
LEARNING_RATE = 1e-3


def random_params(model, seed: int):
  """N(0, 0.02) params (LayerNorm scales 1) drawn with numpy: no init compile."""
  import jax
  from jaxprune.models import bert
  rs = np.random.RandomState(seed)

  def draw(path, x):
    if path[-1].key == "scale":
      return np.ones(x.shape, x.dtype)
    return (rs.standard_normal(x.shape) * 0.02).astype(x.dtype)

  shapes = jax.tree.map(lambda b: b.value, bert.abstract_params(model),
                        is_leaf=lambda b: hasattr(b, "value"))
  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def setup() -> dict:
  """The tiny models, params, optimizer, schedule and global batches of every run.

  A 1-layer student distills a 2-layer teacher (so the layer map is exercised), with
  dropout on in both (the reference preset), BertAdam and cubic pruning to 80% of the
  encoder matrices over 5 steps (a mask event at every step).
  """
  import optax
  from jaxprune import masks, optim, schedules, transforms
  from jaxprune.models import bert

  student = bert.BertForSequenceClassification(bert.BertConfig.tiny(num_hidden_layers=1))
  teacher = bert.BertForSequenceClassification(bert.BertConfig.tiny(num_hidden_layers=2))
  schedule = schedules.cubic_sparsity(TARGET_SPARSITY, STEPS, events=STEPS)
  tx = optax.chain(optim.bert_adam(LEARNING_RATE),
                   transforms.prune_by_magnitude(schedule, masks.BERT_ENCODER_MATRICES))
  rs = np.random.RandomState(0)
  batches = []
  for _ in range(STEPS):
    lengths = rs.randint(SEQ_LEN // 2, SEQ_LEN + 1, GLOBAL_BATCH)
    mask = (np.arange(SEQ_LEN)[None] < lengths[:, None]).astype(np.int32)
    second = (np.arange(SEQ_LEN)[None] >= lengths[:, None] // 2).astype(np.int32)
    batches.append(dict(
        input_ids=rs.randint(1, 128, (GLOBAL_BATCH, SEQ_LEN)).astype(np.int32) * mask,
        attention_mask=mask,
        token_type_ids=second * mask,
        labels=rs.randint(0, 2, GLOBAL_BATCH).astype(np.int32),
        weight=np.ones(GLOBAL_BATCH, np.float32)))
  return dict(student=student, teacher=teacher, tx=tx, schedule=schedule, batches=batches,
              student_params=random_params(student, 0),
              teacher_params=random_params(teacher, 1))


def expected_sparsity(step: int) -> float:
  """The scheduled fraction pruned after ``step`` updates, with exact per-matrix keep
  counts (each encoder matrix keeps ``keep_count(size, s_t)`` weights)."""
  import jax
  from jaxprune import masks
  s = setup()
  flags = jax.tree.leaves(masks.prunable_tree(s["student_params"],
                                              masks.BERT_ENCODER_MATRICES))
  sizes = [x.size for x, f in zip(jax.tree.leaves(s["student_params"]), flags) if f]
  kept = sum(masks.keep_count(n, s["schedule"].in_effect(step)) for n in sizes)
  return 1.0 - kept / sum(sizes)


def make_step(s: dict):
  from jaxprune import train
  return train.make_train_step(s["student"], s["tx"], mode="distill_prune",
                               teacher=s["teacher"], teacher_dropout=True,
                               learning_rate=LEARNING_RATE)


@functools.cache
def reference() -> tuple[object, list[dict[str, float]], object]:
  """``(final state, metrics per step, jitted step)`` with plain ``jax.jit``, 1 device."""
  import jax
  from jaxprune import train
  s = setup()
  step = jax.jit(make_step(s))
  state = train.create_train_state(s["student_params"], s["tx"], jax.random.key(2))
  metrics = []
  for batch in s["batches"]:
    state, m = step(state, s["teacher_params"], batch)
    metrics.append({k: float(v) for k, v in m.items()})
  return state, metrics, step


def flatten(tree) -> dict[str, object]:
  import jax
  from jaxprune.masks import path_str
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def result_arrays(metrics: list[dict[str, float]], params) -> dict[str, np.ndarray]:
  out = {f"metric/{k}": np.array([m[k] for m in metrics]) for k in metrics[0]}
  out.update({f"param/{k}": np.asarray(v) for k, v in flatten(params).items()})
  return out


def run_sharded(mesh_shape: tuple[int, int], interleave: bool = False
                ) -> tuple[dict[str, np.ndarray], dict]:
  """The reference's steps through jaxprune.sharding; each process feeds its rows only
  (``interleave``: devices alternate processes, as on a TPU slice)."""
  import jax
  from jaxprune import optim, sharding, transforms
  from jaxprune.models import bert

  s = setup()
  # A mesh smaller than the device count uses the first devices.
  devices = jax.devices()
  if interleave:
    import interleaved_devices
    devices = interleaved_devices.interleave(devices)
  mesh = sharding.make_mesh(mesh_shape, devices=devices[:int(np.prod(mesh_shape))])
  student_sh = sharding.param_shardings(bert.logical_axes(s["student"]), mesh,
                                        s["student_params"])
  teacher_sh = sharding.param_shardings(bert.logical_axes(s["teacher"]), mesh,
                                        s["teacher_params"])
  state, state_sh = sharding.create_sharded_state(s["student_params"], s["tx"],
                                                  jax.random.key(2), student_sh, mesh)
  teacher_params = sharding.put(s["teacher_params"], teacher_sh)
  step = sharding.jit_train_step(make_step(s), mesh, state_sh, teacher_sh)
  rows = sharding.batch_rows(mesh, GLOBAL_BATCH)
  metrics = []
  for batch in s["batches"]:
    local = {k: v[rows] for k, v in batch.items()}
    state, m = step(state, teacher_params, sharding.global_batch(local, mesh))
    metrics.append({k: float(v) for k, v in m.items()})

  masks = flatten(transforms.find_masks(state.opt_state))
  params = flatten(state.params)
  is_adam = lambda x: isinstance(x, optim.ScaleByBertAdamState)
  adam = [x for x in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(x)]
  adam_mu = flatten(adam[0].mu)
  checks = dict(
      mask_specs={k: str(m.sharding.spec) for k, m in masks.items()},
      param_specs={k: str(p.sharding.spec) for k, p in params.items()},
      mask_mismatch=[k for k, m in masks.items()
                     if not m.sharding.is_equivalent_to(params[k].sharding, m.ndim)],
      mu_mismatch=[k for k, m in adam_mu.items()
                   if not m.sharding.is_equivalent_to(params[k].sharding, m.ndim)],
      state_step_spec=str(state.step.sharding.spec),
      state_rng_spec=str(state.rng.sharding.spec),
      scheduled=[expected_sparsity(t + 1) for t in range(STEPS)],
      odd_vocab_spec=_odd_vocab_spec(mesh),
      compiles=step._cache_size(),
      rows=rows.tolist(),
      process_count=jax.process_count())
  # Every process gets the whole params back to compare them.
  replicated = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(state.params)
  return result_arrays(metrics, replicated), checks


def _odd_vocab_spec(mesh) -> str:
  """Spec of a 127-row embedding: a 'model' axis of size > 1 cannot split it."""
  from jaxprune import sharding
  from jaxprune.models import bert
  model = bert.BertForSequenceClassification(bert.BertConfig.tiny(vocab_size=127))
  specs = sharding.param_shardings(bert.logical_axes(model), mesh,
                                   bert.abstract_params(model))
  return str(specs["bert"]["embeddings"]["word_embeddings"]["embedding"].spec)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--meshes", default="1x1", help="comma-separated DxM mesh shapes")
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--interleave", action="store_true",
                      help="list devices interleaved by process (tests/interleaved_devices.py)")
  args = parser.parse_args(argv)

  from jaxprune import sharding
  sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  import jax

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for spec in args.meshes.split(","):
    arrays, checks = run_sharded(tuple(int(x) for x in spec.split("x")), args.interleave)
    name = f"mesh{spec}_p{jax.process_index()}"
    np.savez(out / f"{name}.npz", **arrays)
    (out / f"{name}.json").write_text(json.dumps(checks))
  if args.coordinator:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
