"""Where the time of the SparseBERT train step goes, per op class, from a JAX profiler trace.

Run: ``python bench/profile_step.py [--shapes minilm,bert-base] [--variants prune,dense]
[--steps 3]`` (about 4 minutes for both shapes on 2 CPU cores). Asserts nothing.

For each shape and variant it builds the step of ``bench/train_step.py`` (``prune``:
distillation + BertAdam + ``prune_by_magnitude`` on a non-event step; ``dense``: the
same without the pruning transform), runs ``--steps`` steps under
``jax.profiler.trace`` and reads the trace's per-HLO-op events. Each executed op is
classified from the optimized HLO (``compiled.as_text()``): its opcode, the ops inside
its fused computation, and the ``op_name`` metadata, which carries the JAX name stack
(Flax module paths, ``transpose(jvp(...))`` for the backward pass, and the named scopes
that ``jaxprune.train`` puts around the teacher, the distillation loss, the optimizer,
``prune_by_magnitude`` and the metrics). Classes:

* matmuls, forward / input-gradient / weight-gradient: the dense layers' dot products
  (a backward dot whose result has no token axis is a weight gradient);
* attention batched matmuls: the ``bhqd,bhkd`` score and context products, both passes;
* softmax / LayerNorm / GELU / dropout apply: the model's elementwise ops and reductions;
* dropout RNG: threefry bits of the dropout masks;
* embeddings: gathers and the scatter-add of their gradient;
* distillation loss: the attention, hidden-state and prediction terms, both passes;
* optimizer, pruning transform, metrics: the named scopes;
* transposes and copies: layout changes XLA inserted;
* other: the rest.

XLA's CPU runtime runs independent ops concurrently, so time is attributed by wall
clock: each instant of the trace is split equally among the ops running then; "busy"
is the sum, the time the step had an op running. The wall time per step is measured
outside the profiler.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
from pathlib import Path
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/train_step.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import train_step as bench  # noqa: E402

CLASSES = ("matmuls forward", "matmuls input-gradient", "matmuls weight-gradient",
           "attention batched matmuls", "softmax/LayerNorm/GELU/dropout apply",
           "dropout RNG", "embeddings", "distillation loss", "optimizer",
           "pruning transform", "metrics", "transposes and copies", "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict[str, dict], dict[str, list[dict]]]:
  """Instructions by name (opcode, shape, op_name, called computations, line) and the
  instructions of each computation."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    if m := _INSTRUCTION.match(line):
      name, shape, opcode, rest = m.groups()
      op_name = _OP_NAME.search(rest)
      item = dict(name=name, shape=shape, opcode=opcode, line=rest,
                  op_name=op_name[1] if op_name else "", calls=_CALLS.findall(rest))
      instructions[name] = item
      if current:
        computations[current].append(item)
    elif m := _COMPUTATION.match(line):
      current = m[1]
  return instructions, computations


def _dims(shape: str) -> tuple[int, ...]:
  m = re.match(r"[a-z0-9]+\[([\d,]*)\]", shape)
  return tuple(int(d) for d in m[1].split(",") if d) if m else ()


def _dots(item: dict, computations: dict[str, list[dict]], depth: int = 0) -> list[dict]:
  """The dot/convolution instructions an op runs (itself or inside its fusion)."""
  if item["opcode"] in ("dot", "convolution"):
    return [item]
  if depth > 3:
    return []
  return [d for c in item["calls"] for inner in computations.get(c, [])
          for d in _dots(inner, computations, depth + 1)]


def classify(item: dict, computations: dict[str, list[dict]],
             tokens_dims: tuple[int, int]) -> str:
  """The op class (one of CLASSES) of an executed HLO instruction; ``tokens_dims`` is the
  (batch, sequence length) of the step's input."""
  name = item["op_name"]
  for scope, label in (("/metrics/", "metrics"), ("prune_by_magnitude", "pruning transform"),
                       ("/optimizer/", "optimizer")):
    if scope in name:
      return label
  if re.search(r"threefry|_bernoulli|_uniform|random_bits", name):
    return "dropout RNG"
  dots = _dots(item, computations)
  if dots:
    if any("lhs_batch_dims={" in d["line"] and "lhs_batch_dims={}" not in d["line"]
           for d in dots) or re.search(r"bh?q|bqh|bkh", name):
      return "attention batched matmuls"
    if "transpose(" in name:  # the backward: a gradient w.r.t. activations has a token axis
      dims = _dims(item["shape"])
      tokens = tokens_dims[0] * tokens_dims[1] in dims or set(tokens_dims) <= set(dims)
      return "matmuls input-gradient" if tokens else "matmuls weight-gradient"
    return "matmuls forward"
  if "distillation_loss" in name:
    return "distillation loss"
  if "embeddings/" in name and "LayerNorm" not in name:
    return "embeddings"
  if (item["opcode"] in ("copy", "transpose") or not name
      or re.search(r"/(reshape|transpose|copy)$", name)):
    return "transposes and copies"
  if "BertForSequenceClassification" in name:
    return "softmax/LayerNorm/GELU/dropout apply"
  return "other"


def trace_op_times(trace_dir: Path, instructions: dict) -> dict[str, float]:
  """Wall-clock seconds per HLO instruction over the trace, overlap shared out.

  XLA's CPU runtime runs independent ops concurrently and some (the Eigen dots) return
  before their work is done: an op's span runs from its event's start to the end of its
  ``end: <op>`` event. Where spans overlap, each instant is split equally among the ops
  running then, so the per-op times add up to the time the step kept the CPU busy.
  """
  files = sorted(trace_dir.rglob("perfetto_trace.json.gz"))
  if not files:
    raise SystemExit(f"no perfetto_trace.json.gz under {trace_dir}")
  data = json.load(gzip.open(files[-1]))
  events = data["traceEvents"] if isinstance(data, dict) else data
  begins, ends = collections.defaultdict(list), collections.defaultdict(list)
  for e in events:
    if e.get("ph") != "X":
      continue
    name, t0, t1 = e.get("name", ""), e["ts"], e["ts"] + e.get("dur", 0)
    if name in instructions:
      begins[name].append((t0, t1))
    elif name.startswith("end: ") and name[5:] in instructions:
      ends[name[5:]].append(t1)
  spans = []  # (start, end, op)
  for name, starts in begins.items():
    starts.sort()
    done = sorted(ends.get(name, []))
    for i, (t0, t1) in enumerate(starts):
      spans.append((t0, max(t1, done[i]) if len(done) == len(starts) else t1, name))
  edges = sorted([(t0, 1, i) for i, (t0, _, _) in enumerate(spans)]
                 + [(t1, 0, i) for i, (_, t1, _) in enumerate(spans)])
  out, active, last = collections.Counter(), set(), None
  for t, starting, i in edges:
    if active and last is not None and t > last:
      share = (t - last) / 1e6 / len(active)
      for j in active:
        out[spans[j][2]] += share
    (active.add if starting else active.discard)(i)
    last = t
  return out


def profile(s: bench.Shape, prune: bool, steps: int, dtype: str = "float32") -> dict:
  import jax
  step = bench.JaxStep(s, prune=prune, dtype=dtype)
  compiled = step.compiled[False if prune else None]
  state = step.state

  def run():
    nonlocal state
    state, metrics = compiled(state, step.teacher_params, step.batch)
    jax.block_until_ready((state, metrics))

  run()
  walls = []
  for _ in range(steps):
    t = time.perf_counter()
    run()
    walls.append(time.perf_counter() - t)
  instructions, computations = parse_hlo(compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        run()
    times = trace_op_times(Path(tmp), instructions)
  per_class, top = collections.Counter(), collections.defaultdict(collections.Counter)
  for name, seconds in times.items():
    label = classify(instructions[name], computations, (s.batch, s.seq))
    per_class[label] += seconds / steps
    top[label][instructions[name]["op_name"] or name] += seconds / steps
  return dict(wall=statistics.median(walls), classes=per_class, top=top)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", default="minilm,bert-base",
                      help="comma-separated: " + ", ".join(bench.SHAPES))
  parser.add_argument("--variants", default="prune,dense", help="prune, dense or both")
  parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--top", type=int, default=0,
                      help="also list the N most expensive op names of each class")
  args = parser.parse_args(argv)
  import jax
  print(f"jax {jax.__version__}, CPU {bench.cpu_model()}, {jax.device_count()} device(s)")
  for shape in args.shapes.split(","):
    s = bench.SHAPES[shape]
    results = {v: profile(s, v == "prune", args.steps, args.dtype)
               for v in args.variants.split(",")}
    flops = bench.step_flops(s)
    print(f"\n== {shape}: {s.layers} layers, hidden {s.hidden}, batch {s.batch}, seq {s.seq} "
          f"({flops / 1e9:.1f} matmul GFLOP per step)")
    header = "".join(f"  {v + ' s/step':>13} {'share':>6}" for v in results)
    print(f"  {'op class':40}{header}")
    for label in CLASSES:
      row = "".join(f"  {r['classes'][label]:13.3f} "
                    f"{100 * r['classes'][label] / max(sum(r['classes'].values()), 1e-9):5.1f}%"
                    for r in results.values())
      print(f"  {label:40}{row}")
    busy = "".join(f"  {sum(r['classes'].values()):13.3f} {'':6}" for r in results.values())
    print(f"  {'busy (sum of the above)':40}" + busy)
    print(f"  {'wall time per step':40}" + "".join(f"  {r['wall']:13.3f} {'':6}"
                                                for r in results.values()))
    if args.top:
      for v, r in results.items():
        for label in CLASSES:
          for op, sec in r["top"][label].most_common(args.top):
            print(f"    [{v}] {label}: {sec:.3f} s  {op[:110]}")


if __name__ == "__main__":
  main()
