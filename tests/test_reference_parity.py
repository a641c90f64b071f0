"""Parity with SparseBERT's pruning loop, re-implemented in PyTorch from REFERENCE.md.

The PyTorch side is written independently of jaxprune: BertAdam (no bias correction,
``clip_grad_norm_`` per tensor, weight decay except biases and LayerNorm) or SGD, then
``t += 1``; on events (``t0 < t < t0 + sparse_steps`` and ``(t - t0) % freq == 0``) the
cubic sparsity in float64, ``keep_k = floor(numel * (1 - s))``, ``torch.topk`` on
``|w * mask|`` keeping ties (``>=`` threshold); then ``w *= mask`` after every step.
Same initial weights and gradient sequence on both sides.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import bert_adam
from jaxprune import cubic_sparsity
from jaxprune import find_masks
from jaxprune import prune_by_magnitude

torch = pytest.importorskip("torch")

STEPS, EVENTS, TARGET = 300, 30, 0.9
# torch's float32 sqrt is not correctly rounded (XLA's is): each BertAdam step can differ
# by an ulp, which moves a weight by an ulp with probability ~ lr * |u| / ulp(w).
LR = {"bert_adam": 2e-3, "sgd": 1e-2}
SHAPES = {  # name -> shape; the first three are pruned (kernels)
    "layer/attention/query/kernel": (48, 32),
    "layer/intermediate/dense/kernel": (32, 64),
    "layer/output/dense/kernel": (64, 20),
    "layer/output/dense/bias": (20,),
    "layer/output/LayerNorm/scale": (20,),
}
PRUNED = [n for n in SHAPES if n.endswith("kernel")]


def initial_and_grads(seed=0):
  rng = np.random.default_rng(seed)
  init = {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in SHAPES.items()}
  # Scales put some tensors above the clipping norm of 1 and some below.
  grads = [{n: (rng.normal(0, 0.03, s) * (1 + (t % 7 == 0) * 4)).astype(np.float32)
            for n, s in SHAPES.items()} for t in range(STEPS)]
  return init, grads


def torch_reference(init, grads, optimizer):
  """SparseBERT's loop; returns final weights and {t: masks} at every event."""
  params = {n: torch.tensor(v) for n, v in init.items()}
  masks = {n: torch.ones_like(params[n]) for n in PRUNED}
  m = {n: torch.zeros_like(p) for n, p in params.items()}
  v = {n: torch.zeros_like(p) for n, p in params.items()}
  b1, b2, eps, wd = 0.9, 0.999, 1e-6, 0.01
  t0, sparse_steps = 0, STEPS
  freq = round(sparse_steps / EVENTS)
  n_events = sparse_steps // freq
  history = {}
  t = 0
  for g_np in grads:
    for n, p in params.items():  # optimizer step
      g = torch.tensor(g_np[n])
      if optimizer == "sgd":
        p.sub_(LR[optimizer] * g)
        continue
      w = torch.nn.Parameter(p.clone())
      w.grad = g.clone()
      torch.nn.utils.clip_grad_norm_(w, 1.0)
      g = w.grad
      m[n] = b1 * m[n] + (1 - b1) * g
      v[n] = b2 * v[n] + (1 - b2) * g * g
      update = m[n] / (v[n].sqrt() + eps)
      if not ("bias" in n or "LayerNorm" in n):
        update = update + wd * p
      p.sub_(LR[optimizer] * update)
    t += 1
    if t0 < t < t0 + sparse_steps and (t - t0) % freq == 0:
      k = (t - t0) // freq
      s = TARGET + (0.0 - TARGET) * (1 - k / n_events) ** 3
      for n in PRUNED:
        score = (params[n] * masks[n]).abs()
        keep_k = math.floor(score.numel() * (1 - s))
        if keep_k < 1:
          masks[n] = torch.zeros_like(score)
        else:
          threshold = torch.topk(score.flatten(), keep_k).values[-1]
          masks[n] = (score >= threshold).float()
      history[t] = {n: masks[n].bool().numpy().copy() for n in PRUNED}
    for n in PRUNED:
      params[n].mul_(masks[n])
  return {n: p.numpy() for n, p in params.items()}, history


def jax_run(init, grads, optimizer):
  opt = optax.chain(
      bert_adam(LR[optimizer]) if optimizer == "bert_adam" else optax.sgd(LR[optimizer]),
      prune_by_magnitude(cubic_sparsity(TARGET, STEPS, events=EVENTS, reference=True),
                         r"kernel$", ties="keep"))
  params = {n: jnp.asarray(v) for n, v in init.items()}
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = {}
  schedule = cubic_sparsity(TARGET, STEPS, events=EVENTS, reference=True)
  for t, g in enumerate(grads, start=1):
    params, state = step(params, state, {n: jnp.asarray(x) for n, x in g.items()})
    if schedule.is_event(t):
      masks = find_masks(state)
      history[t] = {n: np.asarray(masks[n]) for n in PRUNED}
  return {n: np.asarray(p) for n, p in params.items()}, history


@pytest.mark.parametrize("optimizer", ["bert_adam", "sgd"])
def test_matches_reference_loop(optimizer):
  init, grads = initial_and_grads()
  want_params, want_masks = torch_reference(init, grads, optimizer)
  got_params, got_masks = jax_run(init, grads, optimizer)
  assert list(got_masks) == list(want_masks) and len(want_masks) == 29  # t = 10 .. 290
  for t, masks in want_masks.items():
    for n in PRUNED:
      np.testing.assert_array_equal(got_masks[t][n], masks[n], err_msg=f"{n} at t={t}")
  for n in PRUNED:  # the training dynamics matter: not just top-k of the initial weights
    a = np.abs(init[n]).ravel()
    initial_top = np.zeros(a.size, bool)
    initial_top[np.argsort(-a)[:want_masks[290][n].sum()]] = True
    assert (initial_top != want_masks[290][n].ravel()).sum() > 2, n
  diff = max(float(np.abs(got_params[n] - want_params[n]).max()) for n in SHAPES)
  print(f"{optimizer}: masks identical at {len(want_masks)} events, max |dparam| {diff:.3g}")
  assert diff <= 1e-6, diff
  for n in PRUNED:  # pruned weights are exactly zero on both sides
    assert ((got_params[n] == 0) == (want_params[n] == 0)).all()
