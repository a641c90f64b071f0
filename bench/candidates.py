"""Speed candidates for the train step, each timed against what jaxprune does now.

Run: ``python bench/candidates.py`` (about a minute on 2 CPU cores). Prints medians and
ratios side by side (variants interleaved run by run, so that other load hits all of
them alike), asserts nothing. The shapes are MiniLM-L6's at batch 32 x length 128 (the
bench/train_step.py shape). Each line is a change that profiles of the step
(bench/profile_step.py) suggested; ``ratio`` > 1 means the candidate is faster.

* fused QKV: one (384, 1152) projection instead of three (384, 384), forward + backward;
* GELU through ``erf`` (PyTorch's formula) instead of ``jax.nn.gelu``'s ``erfc``, fwd+bwd;
* dropout bits: ``rbg`` keys instead of threefry for a (32, 12, 128, 128) attention mask;
* weight gradient: ``x^T @ dy`` with the transpose materialised first, against XLA's
  own choice (a dot contracting dimension 0 of both operands).
"""

from __future__ import annotations

import math
from pathlib import Path
import statistics
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/train_step.py

B, S, H, HEADS, FFN = 32, 128, 384, 12, 1536


def _time(variants: dict[str, Callable[[], object]], reps: int = 9) -> dict[str, float]:
  import jax
  for f in variants.values():
    jax.block_until_ready(f())  # compile
  times = {name: [] for name in variants}
  for _ in range(reps):
    for name, f in variants.items():
      t = time.perf_counter()
      jax.block_until_ready(f())
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def fused_qkv():
  import jax
  import jax.numpy as jnp
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.standard_normal((B, S, H)), jnp.float32)
  ws = [jnp.asarray(rs.standard_normal((H, H)) * 0.05, jnp.float32) for _ in range(3)]
  bs = [jnp.zeros(H) for _ in range(3)]

  def separate(ws, bs, x):
    return sum(jnp.sum(jnp.tanh(x @ w + b)) for w, b in zip(ws, bs))

  def fused(ws, bs, x):
    y = x @ jnp.concatenate(ws, 1) + jnp.concatenate(bs)
    return sum(jnp.sum(jnp.tanh(t)) for t in jnp.split(y, 3, axis=-1))

  now, cand = (jax.jit(jax.grad(f, argnums=(0, 1, 2))) for f in (separate, fused))
  return "three q/k/v projections, fwd+bwd", lambda: now(ws, bs, x), lambda: cand(ws, bs, x)


def gelu_erf():
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(np.random.RandomState(0).standard_normal((B * S, FFN)) * 3, jnp.float32)
  now = jax.jit(jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=False))))
  cand = jax.jit(jax.grad(
      lambda x: jnp.sum(x * 0.5 * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2)))))))
  return "exact GELU on the FFN activations, fwd+bwd", lambda: now(x), lambda: cand(x)


def dropout_bits():
  import jax
  import jax.numpy as jnp
  x = jnp.ones((B, HEADS, S, S), jnp.float32)

  def dropout(key, x):
    keep = jax.random.bernoulli(jax.random.fold_in(key, 3), 0.9, x.shape)
    return jnp.where(keep, x / 0.9, 0)

  f = jax.jit(dropout)
  k_now, k_cand = jax.random.key(0, impl="threefry2x32"), jax.random.key(0, impl="rbg")
  return "attention-probability dropout mask", lambda: f(k_now, x), lambda: f(k_cand, x)


def weight_grad_layout():
  import jax
  import jax.numpy as jnp
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.standard_normal((B * S, H)), jnp.float32)
  dy = jnp.asarray(rs.standard_normal((B * S, FFN)), jnp.float32)
  now = jax.jit(lambda x, dy: x.T @ dy)
  cand = jax.jit(lambda x, dy: jax.lax.optimization_barrier(x.T) @ dy)
  return "FFN weight gradient x^T @ dy", lambda: now(x, dy), lambda: cand(x, dy)


CANDIDATES = {"fused QKV": fused_qkv, "GELU via erf": gelu_erf, "rbg dropout bits": dropout_bits,
              "transposed input first": weight_grad_layout}


def main() -> None:
  import jax
  import train_step as bench
  print(f"jax {jax.__version__}, CPU {bench.cpu_model()}")
  print(f"{'candidate':24} {'what':44} {'now ms':>8} {'cand. ms':>8} {'ratio':>6}")
  for name, make in CANDIDATES.items():
    what, now, cand = make()
    t = _time({"now": now, "candidate": cand})
    print(f"{name:24} {what:44} {1e3 * t['now']:8.1f} {1e3 * t['candidate']:8.1f} "
          f"{t['now'] / t['candidate']:5.2f}x", flush=True)


if __name__ == "__main__":
  main()
