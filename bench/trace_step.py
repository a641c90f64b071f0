"""CPU seconds to trace and lower the SparseBERT train step's two programs, per shape.

Run: ``python bench/trace_step.py [--shapes tiny,minilm,bert-base]`` (~40 s on 2 CPU
cores for the three). Prints a table, names the CPU, asserts nothing.

A prune run compiles two variants of its step: ``prune_event=False`` (most steps) and
``True`` (the mask events). Before either runs, JAX traces the Python function to a
jaxpr and lowers that to StableHLO; for BERT-base that costs more CPU than loading both
programs from the compilation cache, so it is most of a warm restart's time to the
first step. The models' forward and backward passes sit in an inner ``jax.jit`` of
``jaxprune.train.make_train_step``, so the second variant reuses their trace: its
trace column is the optimizer and the metrics alone. The ``second/first`` column is that
ratio, measured side by side in one process (1.0 would mean nothing is shared).

Nothing is compiled or run: the state and batch are abstract (``jax.eval_shape``), as
tracing needs only shapes and dtypes.
"""

from __future__ import annotations

import argparse
import time

from host_sync import _cpu  # noqa: E402  (bench/ is on sys.path when run as a script)
import train_step as ts  # noqa: E402

SHAPES = {"tiny": ts.Shape(1, 32, 4, 64, batch=8, seq=32), **ts.SHAPES}


def trace_and_lower(s: ts.Shape) -> list[tuple[float, float]]:
  """[(trace, lower) CPU seconds] of the plain variant, then of the event variant."""
  import jax
  import optax
  from jaxprune import masks, optim, train, transforms
  from jaxprune.models import bert

  config = bert.BertConfig(vocab_size=s.vocab, hidden_size=s.hidden,
                           num_hidden_layers=s.layers, num_attention_heads=s.heads,
                           intermediate_size=s.intermediate, num_labels=2)
  model = bert.BertForSequenceClassification(config)
  tx = optax.chain(optim.bert_adam(1e-4),
                   transforms.prune_by_magnitude(ts.schedule(), masks.BERT_ENCODER_MATRICES))
  params = jax.eval_shape(lambda: bert.init_params(model, jax.random.key(0)))
  state = jax.eval_shape(lambda p: train.create_train_state(p, tx, jax.random.key(0)), params)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ts.batch(s))
  step = jax.jit(train.make_train_step(model, tx, mode="distill_prune", teacher=model,
                                       learning_rate=1e-4),
                 static_argnums=(3,), donate_argnums=(0,))
  times = []
  for event in (False, True):
    t0 = time.process_time()
    traced = step.trace(state, params, batch, event)
    t1 = time.process_time()
    traced.lower()
    times.append((t1 - t0, time.process_time() - t1))
  return times


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", default=",".join(SHAPES),
                      help=f"comma-separated, of {sorted(SHAPES)}")
  args = parser.parse_args(argv)
  import jax
  print(f"{_cpu()}; jax {jax.__version__}; CPU seconds of this process")
  print("| shape | trace plain | trace event | second/first | lower plain | lower event |")
  print("|---|---|---|---|---|---|")
  for name in args.shapes.split(","):
    (t_plain, l_plain), (t_event, l_event) = trace_and_lower(SHAPES[name])
    print(f"| {name} | {t_plain:.2f} | {t_event:.2f} | {t_event / t_plain:.2f} | "
          f"{l_plain:.2f} | {l_event:.2f} |", flush=True)


if __name__ == "__main__":
  main()
