"""Overhead of `prune_by_magnitude` on a BERT-base-sized parameter tree (CPU).

Run: ``python bench/prune_overhead.py [--no-model] [--reps 3]`` (about 3-5 minutes on 2 CPU
cores). Prints timings and ratios, asserts nothing.

1. Mask computation alone on the 72 encoder matrices: jaxprune's radix select on the
   float bits (two histogram passes, one batched computation per matrix shape), against
   a 31-pass bisection on the bits and thresholds from ``jnp.sort`` and ``lax.top_k``
   (those two timed on one matrix per shape and scaled to 48 + 12 + 12 matrices).
2. The optimizer update alone (jitted, donated) on the ~110M-parameter tree:
   ``adamw`` vs ``chain(adamw, prune_by_magnitude)`` on non-event and event steps.
3. A BERT-base fine-tune step (batch 8, length 128, fwd + bwd + update, jitted) with
   ``jaxprune.models.bert`` when importable (else a synthetic 12-layer matmul stack of
   the same shapes), with and without pruning, on non-event and event steps.

On CPU most of the non-event overhead is not compute: the event branch of the
``lax.cond`` needs ``p + u`` materialised, and XLA:CPU allocates that temporary afresh on
every step (minor page faults are printed; ~77k extra per BERT-base train step, ~166k in
the optimizer-only test, where XLA materialises two trees). The plain train step itself
page-faults ~1.4 GB per step the same way. With huge pages for glibc's large
allocations (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) the optimizer-only non-event
overhead fell from ~430 ms to ~150 ms in our runs.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import jaxprune  # noqa: E402  pylint: disable=g-import-not-at-top
from jaxprune import masks as masks_lib  # noqa: E402  pylint: disable=g-import-not-at-top

H, FF, LAYERS, VOCAB, POS = 768, 3072, 12, 30522, 512


def bert_base_params(seed: int = 0) -> dict:
  """A plain dict shaped like BERT-base for sequence classification (HF/Flax paths)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(0, 0.02, shape).astype(np.float32))
  dense = lambda i, o: {"kernel": normal(i, o), "bias": jnp.zeros(o)}
  norm = lambda: {"scale": jnp.ones(H), "bias": jnp.zeros(H)}
  layers = {}
  for i in range(LAYERS):
    layers[str(i)] = {
        "attention": {"self": {n: dense(H, H) for n in ("query", "key", "value")},
                      "output": {"dense": dense(H, H), "LayerNorm": norm()}},
        "intermediate": {"dense": dense(H, FF)},
        "output": {"dense": dense(FF, H), "LayerNorm": norm()},
    }
  return {
      "bert": {
          "embeddings": {"word_embeddings": {"embedding": normal(VOCAB, H)},
                         "position_embeddings": {"embedding": normal(POS, H)},
                         "token_type_embeddings": {"embedding": normal(2, H)},
                         "LayerNorm": norm()},
          "encoder": {"layer": layers},
          "pooler": {"dense": dense(H, H)},
      },
      "classifier": dense(H, 2),
  }


def _clock() -> tuple[float, float]:
  return time.perf_counter(), time.process_time()


def median_time(fn, *args, reps: int) -> float:
  """Median process CPU time of ``fn(*args)`` after one warm-up (compile) call.

  CPU time (all threads) rather than wall time: it is far less sensitive to other jobs
  sharing the machine.
  """
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.process_time()
    jax.block_until_ready(fn(*args))
    times.append(time.process_time() - t)
  return statistics.median(times)


def interleaved(steps: dict, carries: dict, extra: tuple, rounds: int,
                tags: dict) -> dict[str, dict[str, list[float]]]:
  """Runs each donating ``step(*carry, *extra) -> carry`` in turn, ``rounds`` times.

  ``tags[name](i)`` names the kind of the i-th timed call (e.g. event / non-event).
  Interleaving spreads machine noise evenly over the variants. Returns wall and CPU
  times per (variant, kind).
  """
  out: dict[str, dict[str, list[float]]] = {}
  for i in range(rounds):
    for name, step in steps.items():
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      w, c = _clock()
      carries[name] = jax.block_until_ready(step(*carries[name], *extra))
      w2, c2 = _clock()
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
      times = out.setdefault(f"{name}{tags[name](i)}", {"wall": [], "cpu": [], "faults": []})
      times["wall"].append(w2 - w)
      times["cpu"].append(c2 - c)
      times["faults"].append(faults)
  return out


def _report(times: dict) -> dict[str, float]:
  med = {}
  for name, t in times.items():
    med[name] = statistics.median(t["cpu"])
    print(f"  {name:<26}: cpu {med[name]:7.3f} s   wall {statistics.median(t['wall']):7.3f} s"
          f"   page faults {statistics.median(t['faults']):9,.0f}   (n={len(t['cpu'])})")
  return med


def _bisect_masks(ws, ks):
  """Alternative: the k-th largest |w| by a 31-step bisection on the float bits (one
  compare-and-count pass per bit), per matrix."""
  out = []
  for w, k in zip(ws, ks):
    keys = jax.lax.bitcast_convert_type(jnp.abs(w), jnp.int32)

    def body(i, prefix, keys=keys, k=k):
      cand = prefix | (jnp.int32(1) << (30 - i))
      return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, prefix)
    out.append(keys >= jax.lax.fori_loop(0, 31, body, jnp.int32(0)))
  return out


def bench_thresholds(params, reps: int) -> None:
  print("== 1. per-matrix masks of the 72 encoder matrices (keep 10%), CPU time")
  flags = jax.tree.leaves(masks_lib.prunable_tree(params, jaxprune.BERT_ENCODER_MATRICES))
  mats = [x for x, f in zip(jax.tree.leaves(params), flags) if f]
  ones = [jnp.ones(m.shape, bool) for m in mats]
  ks = jnp.asarray([m.size // 10 for m in mats], jnp.int32)
  for name, fn in [
      ("radix select (jaxprune), exact k", lambda ws, o: masks_lib.compute_masks(ws, o, ks)),
      ("radix select (jaxprune), ties kept",
       lambda ws, o: masks_lib.compute_masks(ws, o, ks, ties="keep")),
      ("bisection on float bits, 31 passes", lambda ws, o: _bisect_masks(ws, ks)),
  ]:
    print(f"  {name:<36}: {median_time(jax.jit(fn), mats, ones, reps=reps):7.3f} s  "
          "(all 72 matrices)")
  by_shape = {}
  for m in mats:
    by_shape.setdefault(m.shape, []).append(m)
  for name, thr in [
      ("jnp.sort threshold", lambda w, k: jnp.sort(jnp.abs(w).ravel())[w.size - k]),
      ("lax.top_k threshold", lambda w, k: jax.lax.top_k(jnp.abs(w).ravel(), k)[0][-1]),
  ]:
    total = 0.0
    for shape, group in by_shape.items():
      k = group[0].size // 10
      f = jax.jit(lambda w, thr=thr, k=k: jnp.abs(w) >= thr(w, k))
      total += median_time(f, group[0], reps=max(1, reps - 1)) * len(group)
    print(f"  {name:<36}: {total:7.3f} s  (1 matrix per shape, "
          f"x{[len(g) for g in by_shape.values()]})")


def _steps(body) -> dict:
  """The compared steps, each ``step(params, opt_state, x) -> (params, opt_state)``.

  ``body(opt, p, s, x, **update_kwargs)`` is one step. Events fall on even steps only
  (constant 90%: each event recomputes every mask). "cond" decides in the graph (one
  compiled step); "static" passes ``prune_event`` from the host (two compiled steps).
  """
  prune = jaxprune.prune_by_magnitude(lambda t: 0.9, jaxprune.BERT_ENCODER_MATRICES,
                                      events=range(2, 10**5, 2))
  pruned = optax.chain(optax.adamw(1e-4), prune)
  jit = lambda opt, **kw: jax.jit(functools.partial(body, opt, **kw), donate_argnums=(0, 1))
  plain, event = jit(pruned, prune_event=False), jit(pruned, prune_event=True)
  calls = [0]

  def static(*args):
    calls[0] += 1  # this call's 1-based update count
    return (event if calls[0] % 2 == 0 else plain)(*args)
  return {"adamw": (optax.adamw(1e-4), jit(optax.adamw(1e-4))),
          "prune cond": (pruned, jit(pruned)), "prune static": (pruned, static)}


_TAGS = {"adamw": lambda i: ""} | {
    name: (lambda i: ", non-event" if i % 2 else ", event")
    for name in ("prune cond", "prune static")}


def _run(body, params, x, rounds: int) -> dict[str, float]:
  steps, carries = {}, {}
  for name, (opt, step) in _steps(body).items():
    steps[name] = step
    p = jax.tree.map(jnp.copy, params)
    carries[name] = jax.block_until_ready(step(p, opt.init(p), x))  # step 1 (no event)
  return _report(interleaved(steps, carries, (x,), rounds, _TAGS))


def _optimizer_step(opt, p, s, g, **kw):
  u, s = opt.update(g, s, p, **kw)
  return optax.apply_updates(p, u), s


def bench_optimizer(params, reps: int) -> dict[str, float]:
  print("== 2. optimizer update alone (jit, donated), ~110M params")
  grads = jax.tree.map(lambda p: p * 1e-3, params)
  return _run(_optimizer_step, params, grads, 2 * reps + 2)


def _model_loss():
  """(init params, loss(params, batch)) for BERT-base from jaxprune.models if possible."""
  try:
    from jaxprune.models.bert import BertConfig, BertForSequenceClassification, init_params
  except Exception as e:  # pylint: disable=broad-except
    print(f"  (jaxprune.models.bert not importable: {type(e).__name__}: {e})")
    return None
  model = BertForSequenceClassification(BertConfig())
  params = init_params(model, jax.random.key(0))

  def loss(p, batch):
    out = model.apply({"params": p}, batch["ids"], batch["mask"], batch["types"],
                      deterministic=True)
    return optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["y"]).mean()
  return params, loss, "jaxprune.models.bert BertForSequenceClassification (BERT-base)"


def _synthetic_loss():
  """A 12-layer stack with BERT-base's matmul shapes (no attention softmax/LayerNorm)."""
  params = bert_base_params(1)

  def loss(p, batch):
    x = p["bert"]["embeddings"]["word_embeddings"]["embedding"][batch["ids"]]
    for i in range(LAYERS):
      lp = p["bert"]["encoder"]["layer"][str(i)]
      att = lp["attention"]
      q, k, v = (x @ att["self"][n]["kernel"] for n in ("query", "key", "value"))
      s = jnp.einsum("bqd,bkd->bqk", q, k) / np.sqrt(H)
      x = x + jax.nn.softmax(s) @ v @ att["output"]["dense"]["kernel"]
      h = jax.nn.gelu(x @ lp["intermediate"]["dense"]["kernel"])
      x = x + h @ lp["output"]["dense"]["kernel"]
    logits = x[:, 0] @ p["classifier"]["kernel"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  return params, loss, "synthetic 12-layer BERT-base-shaped matmul stack"


def bench_train_step(reps: int, use_model: bool) -> dict[str, float]:
  print("== 3. fine-tune step: batch 8, length 128, fwd + bwd + update (jit, donated)")
  made = _model_loss() if use_model else None
  params, loss, what = made if made is not None else _synthetic_loss()
  print(f"  train step = {what}")
  rng = np.random.default_rng(0)
  batch = {"ids": jnp.asarray(rng.integers(0, 30000, (8, 128)), jnp.int32),
           "mask": jnp.ones((8, 128), jnp.int32), "types": jnp.zeros((8, 128), jnp.int32),
           "y": jnp.asarray(rng.integers(0, 2, (8,)), jnp.int32)}

  def step(opt, p, s, b, **kw):
    return _optimizer_step(opt, p, s, jax.grad(loss)(p, b), **kw)
  return _run(step, params, batch, 2 * reps)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--skip-masks", action="store_true",
                      help="skip part 1 (mask computation methods)")
  parser.add_argument("--no-model", action="store_true",
                      help="use the synthetic matmul stack even if jaxprune.models imports")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s)")
  params = bert_base_params()
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"params: {n / 1e6:.1f}M")
  if not args.skip_masks:
    bench_thresholds(params, args.reps)
  opt = bench_optimizer(params, args.reps)
  del params
  train = bench_train_step(args.reps, not args.no_model)
  base = train["adamw"]
  print("== ratios (CPU time; relative to the adamw fine-tune step)")
  for how in ("cond", "static"):
    nonevent = opt[f"prune {how}, non-event"] - opt["adamw"]
    event = opt[f"prune {how}, event"] - opt["adamw"]
    print(f"  [{how:6}] optimizer-only non-event overhead: {nonevent * 1e3:7.1f} ms = "
          f"{nonevent / base:6.2%} of a train step")
    print(f"  [{how:6}] optimizer-only event overhead    : {event * 1e3:7.1f} ms = "
          f"{event / base:6.2f} train steps")
    print(f"  [{how:6}] train step non-event overhead    : "
          f"{train[f'prune {how}, non-event'] / base - 1:6.2%}")
    print(f"  [{how:6}] train step event overhead        : "
          f"{(train[f'prune {how}, event'] - base) / base:6.2f} train steps")


if __name__ == "__main__":
  main()
