"""Time to the first training step with JAX's persistent compilation cache cold and warm.

Run: ``python bench/compile_cache.py [config-arg ...]`` (default ``configs/tiny.py:steps=4``;
e.g. ``configs/minilm_glue.py:task=rte`` with ``--config.finetune.num_steps=4`` for
MiniLM-L6's shapes). Each run is a fresh ``jaxprune --mode=finetune`` process (nothing
compiled in memory) in a fresh workdir: the cold runs with an empty
``config.compilation_cache_dir``, the warm ones with the cache the cold one left, as a
run resumed after a preemption finds it. Prints, per run, the seconds from the start of
the training loop to the end of step 1 (the step's compilation included) and the
process's wall time; names the CPU; asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_sync import _cpu  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]


def one_run(args: list[str], cache: Path, workdir: Path) -> tuple[float, float]:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  t = time.perf_counter()
  subprocess.run([sys.executable, "-m", "jaxprune.main", "--mode=finetune", *args,
                  f"--workdir={workdir}", f"--config.compilation_cache_dir={cache}",
                  "--config.finetune.log_every=1"], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  wall = time.perf_counter() - t
  first = next(r for r in map(json.loads, open(workdir / "metrics.jsonl"))
               if r["kind"] == "train" and r["step"] == 1)
  return 1.0 / first["steps_per_s"], wall


def main() -> None:
  args = sys.argv[1:] or ["--config=configs/tiny.py:steps=4"]
  args = [a if a.startswith("--") else f"--config={a}" for a in args]
  cold, warm = [], []
  for _ in range(2):
    with tempfile.TemporaryDirectory() as tmp:
      tmp = Path(tmp)
      cold.append(one_run(args, tmp / "cache", tmp / "cold"))
      warm.append(one_run(args, tmp / "cache", tmp / "warm"))
  print(f"{_cpu()}; {' '.join(args)}; 2 cold/warm pairs")
  for name, runs in (("cold cache", cold), ("warm cache", warm)):
    print(f"  {name}: first step {statistics.median(r[0] for r in runs):6.2f} s, "
          f"process {statistics.median(r[1] for r in runs):6.2f} s  "
          f"{[(round(a, 2), round(b, 2)) for a, b in runs]}")
  ratio = statistics.median(r[0] for r in cold) / statistics.median(r[0] for r in warm)
  print(f"  first step, cold / warm: {ratio:.2f}x")


if __name__ == "__main__":
  main()
