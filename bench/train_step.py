"""Examples/s of the SparseBERT train step: jaxprune vs eager PyTorch, on this CPU.

Run: ``python bench/train_step.py [--shapes bert-base,minilm] [--steps 8]`` (about 10
minutes on 2 CPU cores for both shapes; ``--shapes minilm --steps 4`` takes ~3).
Prints timings and ratios, asserts nothing.

One step = student forward + backward, teacher forward (no grad, dropout off), the
three distillation terms (attention scores, hidden states, soft cross-entropy), the
BertAdam update and pruning to a cubic schedule (mask events every 7 steps, like the
reference's 684-step MRPC run with 100 events). Student and teacher have the shape of
the benchmark (random weights: timing only). Per shape, side by side and interleaved
step by step (so that other load on the machine hits all of them alike):

* ``jax prune``: ``jaxprune.train`` step, mode ``distill_prune`` (BertAdam +
  ``prune_by_magnitude``), jitted through ``jaxprune.sharding`` on a 1x1 mesh;
* ``jax dense``: the same step, mode ``distill`` (no pruning transform);
* ``torch prune``: an eager PyTorch step with transformers' ``BertForSequenceClassification``
  (attention scores exposed through a registered attention function), the same losses,
  BertAdam semantics (``torch._foreach`` ops, per-tensor clipping, no bias correction)
  and the reference's mask handling (masks re-applied after every step, recomputed by
  ``kthvalue`` thresholds on event steps).

Times are medians of wall-clock seconds per step over non-event steps; event steps are
timed separately and amortized over the event period. The variants take turns at
starting each round (the first step of a round pays for re-faulting memory that the
others and the peak measurement freed). GFLOP/s counts the matmul FLOPs
of the model (teacher forward + student forward and backward = 4 forwards); the peak is
a large float32 matmul timed once after every round of steps (the median is used).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from pathlib import Path
import re
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

EVENT_PERIOD = 7       # steps between mask events (684 steps / 97 events in the reference)
TARGET_SPARSITY = 0.9
LEARNING_RATE = 3e-5
TORCH_THREADS = 2


@dataclasses.dataclass(frozen=True)
class Shape:
  layers: int
  hidden: int
  heads: int
  intermediate: int
  batch: int
  seq: int
  vocab: int = 30522


SHAPES = {
    "bert-base": Shape(layers=12, hidden=768, heads=12, intermediate=3072, batch=8, seq=128),
    "minilm": Shape(layers=6, hidden=384, heads=12, intermediate=1536, batch=32, seq=128),
}
# Targets of the speed issue, on every shape: jaxprune >= TARGET_SPEEDUP x the eager
# PyTorch step's examples/s (stretch: STRETCH_SPEEDUP); the pruning transform's cost on
# non-event steps and amortised over the events; the dense BERT-base step's share of
# XLA's float32 matmul peak.
TARGET_SPEEDUP, STRETCH_SPEEDUP = 1.0, 1.2
TARGET_PRUNE_OVERHEAD = 0.03
TARGET_AMORTIZED_OVERHEAD = 0.05
TARGET_PEAK_FRACTION = {"bert-base": 0.70}


def step_flops(s: Shape) -> float:
  """Matmul FLOPs of one step: teacher forward + student forward and backward."""
  per_token_layer = (2 * 4 * s.hidden * s.hidden         # q, k, v, attention output
                     + 2 * 2 * s.hidden * s.intermediate  # FFN in and out
                     + 2 * 2 * s.seq * s.hidden)           # scores and context
  forward = s.batch * s.seq * s.layers * per_token_layer
  return 4.0 * forward


def batch(s: Shape, seed: int = 0) -> dict[str, np.ndarray]:
  rs = np.random.RandomState(seed)
  return dict(input_ids=rs.randint(1, s.vocab, (s.batch, s.seq)).astype(np.int32),
              attention_mask=np.ones((s.batch, s.seq), np.int32),
              token_type_ids=np.zeros((s.batch, s.seq), np.int32),
              labels=rs.randint(0, 2, s.batch).astype(np.int32),
              weight=np.ones(s.batch, np.float32))


def schedule(total_events: int = 100):
  from jaxprune import schedules
  return schedules.cubic_sparsity(TARGET_SPARSITY, total_events * EVENT_PERIOD,
                                  events=total_events)


# ------------------------------------------------------------------------------ jax


@functools.cache
def _matmul(n: int, dtype: str = "float32"):
  import jax
  import jax.numpy as jnp
  a = jnp.asarray(np.random.RandomState(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()  # compile
  return f, a


def _matmul_gflops(matmul: Callable[[], object], n: int, reps: int) -> float:
  """GFLOP/s of the fastest of ``reps`` calls of an (n, n) @ (n, n) ``matmul``."""
  best = math.inf
  for _ in range(reps):
    t = time.perf_counter()
    matmul()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def matmul_peak(n: int = 4096, reps: int = 5, dtype: str = "float32") -> float:
  """GFLOP/s of the best of ``reps`` jitted (n, n) @ (n, n) matmuls in ``dtype`` (at
  JAX's default precision: TF32 for float32 on NVIDIA GPUs since Ampere)."""
  f, a = _matmul(n, dtype)
  return _matmul_gflops(lambda: f(a).block_until_ready(), n, reps)


def torch_matmul_peak(n: int = 4096, reps: int = 5) -> float | None:
  """GFLOP/s of the best of ``reps`` float32 (n, n) @ (n, n) matmuls in PyTorch (MKL or
  oneDNN), on TORCH_THREADS threads; None without torch."""
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(TORCH_THREADS)
  a = torch.from_numpy(np.random.RandomState(0).standard_normal((n, n)).astype(np.float32))
  a @ a  # warm up
  return _matmul_gflops(lambda: a @ a, n, reps)


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``), its core count, and its matrix extensions."""
  import os
  import platform
  name, flags = platform.processor() or platform.machine(), set()
  try:
    for line in open("/proc/cpuinfo"):
      key, _, value = line.partition(":")
      if key.strip() == "model name":
        name = value.strip()
      elif key.strip() == "flags":
        flags = set(value.split())
  except OSError:
    pass
  ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
  return f"{name}, {os.cpu_count()} cores" + (f" ({' '.join(ext)})" if ext else "")


class JaxStep:
  """A compiled jaxprune train step and its state (``prune``: distill_prune, else distill)."""

  def __init__(self, s: Shape, prune: bool, dtype: str = "float32"):
    import jax
    import optax
    from jaxprune import masks, optim, sharding, train, transforms
    from jaxprune.models import bert

    config = bert.BertConfig(vocab_size=s.vocab, hidden_size=s.hidden,
                             num_hidden_layers=s.layers, num_attention_heads=s.heads,
                             intermediate_size=s.intermediate, dtype=dtype)
    student = bert.BertForSequenceClassification(config)
    tx = optim.bert_adam(LEARNING_RATE)
    self.schedule, self.count = (schedule() if prune else None), 0
    if prune:
      tx = optax.chain(tx, transforms.prune_by_magnitude(self.schedule,
                                                         masks.BERT_ENCODER_MATRICES))
    mesh = sharding.make_mesh((1, 1), devices=jax.devices()[:1])
    shardings = sharding.param_shardings(bert.logical_axes(student), mesh)
    params = random_params(student, 0)
    self.teacher_params = sharding.put(random_params(student, 1), shardings)
    self.state, state_sh = sharding.create_sharded_state(params, tx, jax.random.key(0),
                                                         shardings, mesh)
    self.fn = train.make_train_step(student, tx, mode="distill_prune" if prune else "distill",
                                    teacher=student, learning_rate=LEARNING_RATE)
    self.step = sharding.jit_train_step(self.fn, mesh, state_sh, shardings)
    self.batch = sharding.global_batch(batch(s), mesh)
    # Compiled up front: the event variant would otherwise compile inside a timed step.
    self.compiled = {e: self.step.lower(self.state, self.teacher_params, self.batch,
                                        e).compile()
                     for e in ((False, True) if prune else (None,))}
    self.parts = dict(student=student, tx=tx)

  def __call__(self) -> float:
    import jax
    self.count += 1  # As the trainer: the host tells the step whether it is an event.
    event = self.schedule.is_event(self.count) if self.schedule else None
    t = time.perf_counter()
    self.state, metrics = self.compiled[event](self.state, self.teacher_params, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t

  def xla_flops(self) -> float | None:
    cost = self.compiled[False if self.schedule else None].cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost.get("flops") if cost else None


def random_params(model, seed: int) -> Any:
  """N(0, 0.02) weights (LayerNorm scales 1) from numpy: no init compile."""
  import jax
  from jaxprune.models import bert
  rs = np.random.RandomState(seed)
  shapes = jax.tree.map(lambda b: b.value, bert.abstract_params(model),
                        is_leaf=lambda b: hasattr(b, "value"))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (np.ones(x.shape, x.dtype) if path[-1].key == "scale"
                       else (rs.standard_normal(x.shape) * 0.02).astype(x.dtype)), shapes)


def jax_breakdown(s: Shape, reps: int = 3) -> dict[str, tuple[float, float]]:
  """Median (wall, process CPU) seconds of the pieces of the step, each jitted alone."""
  import jax
  import optax
  from jaxprune import distill, masks, optim, transforms
  from jaxprune.models import bert

  config = bert.BertConfig(vocab_size=s.vocab, hidden_size=s.hidden,
                           num_hidden_layers=s.layers, num_attention_heads=s.heads,
                           intermediate_size=s.intermediate)
  model = bert.BertForSequenceClassification(config)
  params = jax.tree.map(np.asarray, random_params(model, 0))
  teacher_params = random_params(model, 1)
  b = batch(s)
  args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
  outputs = dict(output_hidden_states=True, output_attention_scores=True)
  key = jax.random.key(0)

  teacher_fwd = jax.jit(lambda p: model.apply({"params": p}, *args, **outputs))
  t_out = teacher_fwd(teacher_params)

  def loss(p, rng):
    out = model.apply({"params": p}, *args, deterministic=False, rngs={"dropout": rng},
                      **outputs)
    return distill.distillation_loss(out, t_out)[0]

  student_fwd_bwd = jax.jit(jax.value_and_grad(loss))
  student_fwd = jax.jit(loss)
  _, grads = student_fwd_bwd(params, key)
  dense_tx = optim.bert_adam(LEARNING_RATE)
  prune_tx = optax.chain(optim.bert_adam(LEARNING_RATE),
                         transforms.prune_by_magnitude(schedule(), masks.BERT_ENCODER_MATRICES))

  def update(tx):
    state = tx.init(params)
    f = jax.jit(lambda g, st, p: optax.apply_updates(p, tx.update(g, st, p)[0]))
    return lambda: f(grads, state, params)

  def prune_event():
    state = prune_tx.init(params)
    state = (state[0], state[1]._replace(count=state[1].count + EVENT_PERIOD - 1))
    f = jax.jit(lambda g, st, p: optax.apply_updates(p, prune_tx.update(g, st, p)[0]))
    return lambda: f(grads, state, params)

  pieces = {
      "teacher forward": lambda: teacher_fwd(teacher_params),
      "student forward (+ KD loss)": lambda: student_fwd(params, key),
      "student forward + backward": lambda: student_fwd_bwd(params, key),
      "BertAdam update": update(dense_tx),
      "BertAdam + prune, non-event": update(prune_tx),
      "BertAdam + prune, mask event": prune_event(),
  }
  out = {}
  for name, fn in pieces.items():
    jax.block_until_ready(fn())
    wall, cpu = [], []
    for _ in range(reps):
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      wall.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    out[name] = (statistics.median(wall), statistics.median(cpu))
  return out


# ---------------------------------------------------------------------------- torch

_PRUNABLE = re.compile(r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|"
                       r"attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$")


def _register_score_attention() -> str:
  """An attention function that returns the masked, scaled pre-softmax scores (the
  reference's TinyBERT model returns those, transformers returns probabilities)."""
  import torch
  import torch.nn.functional as F
  from transformers import AttentionInterface
  from transformers.masking_utils import AttentionMaskInterface, eager_mask

  def scores_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       **kwargs):
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
      scores = scores + attention_mask.clamp(min=-10000.0)  # the reference's mask value
    probs = F.dropout(F.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), scores

  AttentionInterface.register("jaxprune_scores", scores_attention)
  AttentionMaskInterface.register("jaxprune_scores", eager_mask)
  return "jaxprune_scores"


class TorchStep:
  """The reference's step in eager PyTorch: KD losses, BertAdam, mask re-application.

  ``device``: ``"cpu"`` or ``"cuda"``; ``dtype="bfloat16"`` runs the forward passes under
  ``torch.autocast`` (bf16 matmuls, float32 weights and optimizer), as JAX's
  ``precision=bfloat16`` does."""

  def __init__(self, s: Shape, device: str = "cpu", dtype: str = "float32"):
    import torch
    import transformers
    torch.set_num_threads(TORCH_THREADS)
    self.device, self.dtype = device, dtype
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, intermediate_size=s.intermediate, num_labels=2,
        attn_implementation=_register_score_attention())
    self.student = transformers.BertForSequenceClassification(config).to(device).train()
    self.teacher = transformers.BertForSequenceClassification(config).to(device).eval()
    self.teacher.requires_grad_(False)
    named = list(self.student.named_parameters())
    self.params = [p for _, p in named]
    self.decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
    self.prunable = [p for n, p in named if _PRUNABLE.search(n)]
    assert len(self.prunable) == 6 * s.layers
    self.masks = [torch.ones_like(p) for p in self.prunable]
    self.m = [torch.zeros_like(p) for p in self.params]
    self.v = [torch.zeros_like(p) for p in self.params]
    self.batch = {k: torch.as_tensor(v).long().to(device) for k, v in batch(s).items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
    self.schedule = schedule()
    self.t = 0

  def loss(self):
    import torch
    import torch.nn.functional as F
    kwargs = dict(output_hidden_states=True, output_attentions=True, **self.batch)
    with torch.autocast(self.device, torch.bfloat16, enabled=self.dtype == "bfloat16"):
      with torch.no_grad():
        t_out = self.teacher(**kwargs)
      s_out = self.student(**kwargs)
    zero_pad = lambda x: torch.where(x <= -100, torch.zeros_like(x), x)
    att = sum(F.mse_loss(zero_pad(a), zero_pad(b))
              for a, b in zip(s_out.attentions, t_out.attentions))
    hid = sum(F.mse_loss(a, b) for a, b in zip(s_out.hidden_states, t_out.hidden_states))
    pred = (-F.softmax(t_out.logits, -1) * F.log_softmax(s_out.logits, -1)).mean()
    return att + hid + pred

  @staticmethod
  def bert_adam(params, grads, m, v, decay, lr=LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-6,
                wd=0.01, max_norm=1.0):
    import torch
    norms = torch._foreach_norm(grads)
    torch._foreach_mul_(grads, [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms])
    torch._foreach_mul_(m, b1)
    torch._foreach_add_(m, grads, alpha=1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
    update = torch._foreach_div(m, torch._foreach_add(torch._foreach_sqrt(v), eps))
    decayed = {id(p) for p in decay}
    idx = [i for i, p in enumerate(params) if id(p) in decayed]
    torch._foreach_add_([update[i] for i in idx], [params[i] for i in idx], alpha=wd)
    torch._foreach_add_(params, update, alpha=-lr)

  def __call__(self) -> float:
    import torch
    t = time.perf_counter()
    self.t += 1
    for p in self.params:
      p.grad = None
    self.loss().backward()
    with torch.no_grad():
      self.bert_adam(self.params, [p.grad for p in self.params], self.m, self.v, self.decay)
      if self.schedule.is_event(self.t):  # the reference: |w * mask| >= k-th largest
        sparsity = self.schedule.sparsity(self.t)
        for i, (p, mask) in enumerate(zip(self.prunable, self.masks)):
          score = (p * mask).abs().flatten()
          keep = math.floor(score.numel() * (1 - sparsity))
          threshold = torch.kthvalue(score, score.numel() - keep + 1).values
          self.masks[i] = (score >= threshold).reshape(p.shape).to(p.dtype)
      torch._foreach_mul_(self.prunable, self.masks)
    if self.device == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------- main


@dataclasses.dataclass
class Timing:
  normal: list[float] = dataclasses.field(default_factory=list)
  events: list[float] = dataclasses.field(default_factory=list)

  @property
  def median(self) -> float:
    return statistics.median(self.normal)

  @property
  def amortized(self) -> float:
    """Seconds per step with one event step in every EVENT_PERIOD."""
    if not self.events:
      return self.median
    return ((EVENT_PERIOD - 1) * self.median + statistics.median(self.events)) / EVENT_PERIOD


def measure_shape(s: Shape, steps: int, use_torch: bool, dtype: str = "float32",
                  torch_device: str = "cpu", log: Callable[[str], None] = print,
                  peak_n: int = 4096) -> dict:
  """Times the jax prune, jax dense and (``use_torch``) eager PyTorch steps of shape
  ``s`` side by side: {"timings": {label: Timing}, "peak": median matmul GFLOP/s in
  ``dtype`` under the same load, "peak_best", "build_seconds": {label: s}, "xla_flops"}."""
  runners: dict[str, Callable[[], float]] = {}
  build = {}
  for label, make in [("jax prune", lambda: JaxStep(s, prune=True, dtype=dtype)),
                      ("jax dense", lambda: JaxStep(s, prune=False, dtype=dtype)),
                      ("torch prune", lambda: TorchStep(s, torch_device, dtype)
                       if use_torch else None)]:
    t = time.perf_counter()
    runner = make()
    if runner is None:
      continue
    runner()  # compile / warm up: step 1
    build[label] = time.perf_counter() - t
    log(f"  {label}: built and warmed up in {build[label]:.1f} s")
    runners[label] = runner
  events = schedule()
  timings = {label: Timing() for label in runners}
  peaks = []
  labels = list(runners)
  for t in range(2, steps + 2):  # step 1 was the warm-up
    # Each round starts with another variant: the first step after the matmul peak and
    # the other variants pays for re-faulting its freed buffers (up to +50% measured),
    # which a fixed order would charge to one variant only.
    for label in labels[t % len(labels):] + labels[:t % len(labels)]:
      runner = runners[label]
      seconds = runner()
      is_event = events.is_event(t) and "prune" in label
      (timings[label].events if is_event else timings[label].normal).append(seconds)
    peaks.append(matmul_peak(peak_n, reps=1, dtype=dtype))  # under the steps' load
  return dict(timings=timings, peak=statistics.median(peaks), peak_best=max(peaks),
              build_seconds=build, xla_flops=runners["jax dense"].xla_flops())


def bench_shape(name: str, s: Shape, steps: int, use_torch: bool, breakdown: bool,
                dtype: str = "float32") -> None:
  print(f"\n== {name}: {s.layers} layers, hidden {s.hidden}, batch {s.batch}, seq {s.seq}, "
        f"jax compute dtype {dtype}", flush=True)
  m = measure_shape(s, steps, use_torch, dtype, log=lambda line: print(line, flush=True))
  timings, peak = m["timings"], m["peak"]
  print(f"  matmul peak during the steps: median {peak:.0f}, best {m['peak_best']:.0f} GFLOP/s "
        f"(% peak below uses the median)")
  flops = step_flops(s)
  print(f"  model FLOPs per step: {flops / 1e9:.1f} GFLOP; XLA counts "
        f"{(m['xla_flops'] or 0) / 1e9:.1f} GFLOP (dense step)")
  print(f"  {'':12} {'s/step':>8} {'event s':>8} {'amort. s':>8} {'ex/s':>7} "
        f"{'GFLOP/s':>8} {'% peak':>7}")
  for label, tm in timings.items():
    ev = f"{statistics.median(tm.events):8.3f}" if tm.events else f"{'-':>8}"
    print(f"  {label:12} {tm.median:8.3f} {ev} {tm.amortized:8.3f} "
          f"{s.batch / tm.amortized:7.2f} {flops / tm.median / 1e9:8.1f} "
          f"{100 * flops / tm.median / 1e9 / peak:6.1f}%")
  jp, jd = timings["jax prune"], timings["jax dense"]
  verdict = lambda ok: "met" if ok else "MISSED"
  non_event, overhead = jp.median / jd.median - 1, jp.amortized / jd.median - 1
  print(f"  pruning overhead: non-event steps {100 * non_event:+.1f}% (target <= "
        f"{100 * TARGET_PRUNE_OVERHEAD:.0f}%: {verdict(non_event <= TARGET_PRUNE_OVERHEAD)}), "
        f"amortized over 1 event / {EVENT_PERIOD} steps {100 * overhead:+.1f}% (target <= "
        f"{100 * TARGET_AMORTIZED_OVERHEAD:.0f}%: "
        f"{verdict(overhead <= TARGET_AMORTIZED_OVERHEAD)})")
  fraction = flops / jd.median / 1e9 / peak
  target = TARGET_PEAK_FRACTION.get(name)
  print(f"  jax dense at {100 * fraction:.1f}% of XLA's matmul peak"
        + (f"  target >= {100 * target:.0f}%: {verdict(fraction >= target)}" if target else ""))
  if "torch prune" in timings:
    speedup = timings["torch prune"].amortized / jp.amortized
    print(f"  jaxprune / torch examples/s: {speedup:.2f}x  target >= {TARGET_SPEEDUP}x: "
          f"{verdict(speedup >= TARGET_SPEEDUP)} (stretch {STRETCH_SPEEDUP}x: "
          f"{verdict(speedup >= STRETCH_SPEEDUP)})")
  if breakdown:
    print("  breakdown of the jax step (each piece jitted alone; median wall s, CPU s, "
          "share of the step's wall time, GFLOP/s):")
    forwards = {"teacher forward": 1, "student forward (+ KD loss)": 1,
                "student forward + backward": 3}
    for piece, (wall, cpu) in jax_breakdown(s).items():
      rate = (f"{forwards[piece] * flops / 4 / wall / 1e9:6.1f}" if piece in forwards
              else f"{'-':>6}")
      print(f"    {piece:30} {wall:7.3f} {cpu:7.3f} {100 * wall / jp.median:5.1f}% {rate}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: "
                      + ", ".join(SHAPES))
  parser.add_argument("--steps", type=int, default=8, help="timed steps per variant "
                      f"(>= {EVENT_PERIOD - 1} includes a mask event)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch step")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of the jax steps (bfloat16: mixed precision, "
                      "config.precision; on a CPU without bf16 matmul units it may be slower)")
  parser.add_argument("--breakdown", action="store_true",
                      help="also time the pieces of the jax step (profile)")
  args = parser.parse_args(argv)
  import jax
  print(f"CPU: {cpu_model()}")
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; "
        f"torch threads {TORCH_THREADS}")
  torch_peak = None if args.no_torch else torch_matmul_peak()
  print(f"float32 matmul peak (4096^3): jax/XLA {matmul_peak():.0f} GFLOP/s"
        + (f", PyTorch {torch_peak:.0f} GFLOP/s" if torch_peak else ""))
  for name in args.shapes.split(","):
    bench_shape(name, SHAPES[name], args.steps, not args.no_torch, args.breakdown, args.dtype)
  print(f"\nmatmul peak re-measured at the end: {matmul_peak():.0f} GFLOP/s")


if __name__ == "__main__":
  main()
