"""Steps/s of the training loop with the host fetching every step, and every 100 steps.

Run: ``python bench/host_sync.py`` (about 2 minutes on 2 CPU cores). The tiny config
(configs/tiny.py with 2 layers, as docs/performance.md measured it: 32 wide, batch 8),
where a step's device time is smallest and the host's share of each step largest,
fine-tunes for 400 steps with ``log_every=1`` (the loop fetched every step's metrics
before results were deferred: the host waits for each step before dispatching the next)
and with ``log_every=100`` (results stay on the device between log steps). The rate is
taken over steps 201-400, after compilation; runs alternate so that other load hits both
alike. Prints medians and the ratio, names the CPU, asserts nothing.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, FROM = 400, 200


def _cpu() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def rate(log_every: int) -> float:
  """Steps/s over steps FROM+1..STEPS of one tiny finetune run."""
  import importlib.util
  from jaxprune import trainer
  spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"steps={STEPS}")
  config.model_overrides.num_hidden_layers = 2  # as measured in docs/performance.md
  config.finetune.update(log_every=log_every, eval_every=STEPS, checkpoint_every=STEPS)
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir, "finetune", progress=False)
    rows = {r["step"]: r for r in map(json.loads, open(Path(workdir) / "metrics.jsonl"))
            if r["kind"] == "train"}
  elapsed = lambda step: step / rows[step]["steps_per_s"]  # since the loop started
  return (STEPS - FROM) / (elapsed(STEPS) - elapsed(FROM))


def main() -> None:
  import jax
  reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
  rates: dict[int, list[float]] = {1: [], 100: []}
  for _ in range(reps):
    for log_every in rates:
      rates[log_every].append(rate(log_every))
  print(f"{_cpu()}, jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s); tiny config, steps {FROM + 1}-{STEPS}, {reps} runs each")
  before, after = (statistics.median(rates[k]) for k in (1, 100))
  print(f"  fetch every step   (log_every=1):   {before:7.1f} steps/s  "
        f"{[round(r, 1) for r in rates[1]]}")
  print(f"  fetch every 100    (log_every=100): {after:7.1f} steps/s  "
        f"{[round(r, 1) for r in rates[100]]}")
  print(f"  ratio: {after / before:.2f}x")


if __name__ == "__main__":
  main()
