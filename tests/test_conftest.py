"""The suite's own machinery: its scheduling (conftest.worker_chunks: no test lost, slow
ones first), tests/site/sitecustomize.py (one compilation cache key on every process;
the compile log that tests/timing.py sums), the garbage collector back on after the
imports, and the GCS emulator's error output."""

import subprocess
import sys

from hypothesis import given, strategies as st

from conftest import BUDGET_MINUTES, _quiet_on_hang_ups, budget_line, cpu_env, worker_chunks
from test_multiprocess import free_port


class Item:
  def __init__(self, name: str, slow: bool):
    self.name, self.slow = name, slow

  def get_closest_marker(self, name: str):
    return object() if name == "slow" and self.slow else None


def _chunks(items: list, workers: int) -> list[list]:
  """What pytest-xdist's worksteal hands each worker first (its initial split)."""
  out, left = [], list(items)
  for w in range(workers):
    size = len(left) // (workers - w)
    out.append(left[:size])
    left = left[size:]
  return out


def test_each_worker_starts_on_its_share_of_the_slow_tests():
  items = [Item(f"s{i}", True) for i in range(3)] + [Item(f"q{i}", False) for i in range(7)]
  ordered = worker_chunks(items, 2)
  assert [i.name for i in ordered] == ["s0", "s2", "q0", "q1", "q2",
                                       "s1", "q3", "q4", "q5", "q6"]
  assert [[i.name for i in c] for c in _chunks(ordered, 2)] == [
      ["s0", "s2", "q0", "q1", "q2"], ["s1", "q3", "q4", "q5", "q6"]]
  assert [i.name for i in worker_chunks(items, 1)] == [i.name for i in items]  # no xdist


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5))
def test_every_test_is_kept_once_and_each_chunk_runs_slow_first(flags, workers):
  items = [Item(str(i), slow) for i, slow in enumerate(flags)]
  ordered = worker_chunks(items, workers)
  assert sorted(i.name for i in ordered) == sorted(i.name for i in items)
  if len(items) // workers < -(-sum(flags) // workers):
    return  # more slow tests than a chunk holds: kept, but not dealt evenly
  chunks = _chunks(ordered, workers)
  for chunk in chunks:
    kinds = [i.slow for i in chunk]
    assert kinds == sorted(kinds, reverse=True)  # slow ones, then short ones
  slow_counts = [sum(i.slow for i in c) for c in chunks]
  assert max(slow_counts) - min(slow_counts) <= 1


# Each process: the persistent cache key of one program sharded over both processes' 4
# CPU devices, and whether it found it in the (shared, initially empty) cache.
_KEY_OF_A_SHARDED_PROGRAM = """
import sys
import jax
import numpy as np
from jax._src import compiler
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
keys = []
read = compiler._cache_read
compiler._cache_read = lambda name, key, *a: (keys.append(key), read(name, key, *a))[1]
mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones(2, np.float32))
assert float(jax.jit(lambda a: (a * 2).sum())(x)) == 8.0
print(keys[-1])
"""


def test_every_cpu_process_of_a_run_has_the_same_compilation_cache_key(tmp_path):
  """With tests/site on PYTHONPATH (conftest), process 1 of a 2-process CPU run looks up
  the key process 0 writes, as every host of a TPU slice does; without it, JAX 0.10's CPU
  topology fingerprint differs per process and process 1 compiled everything again."""
  env = cpu_env(2)
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _KEY_OF_A_SHARDED_PROGRAM, address, str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  keys = [out.split()[-1] for out, _ in outs]
  assert keys[0] == keys[1], keys


_ONE_PROGRAM = """
import jax, jax.numpy as jnp
print(jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).sum())
"""


def test_the_compile_log_has_one_line_per_compile_and_timing_sums_it(tmp_path):
  """JAXPRUNE_COMPILE_LOG (tests/site): the first process compiles the program and logs
  it, with the test that started it; the second finds it in the persistent cache and
  logs nothing. tests/timing.py --compiles sums the log."""
  import json

  import timing
  log = tmp_path / "compiles.jsonl"
  env = cpu_env(1)
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAXPRUNE_COMPILE_LOG=str(log),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  lines = []
  for _ in range(2):
    subprocess.run([sys.executable, "-c", _ONE_PROGRAM], env=env, check=True, timeout=120)
    lines.append(len(log.read_text().splitlines()))
  rows = [json.loads(line) for line in log.read_text().splitlines()]
  assert lines[1] == lines[0] > 0  # the second process compiled nothing
  lambdas = [r for r in rows if r["program"] == "jit__lambda"]
  assert len(lambdas) == 1 and lambdas[0]["cpu_s"] > 0
  assert {r["test"] for r in rows} == {
      "tests/test_conftest.py::test_the_compile_log_has_one_line_per_compile_and_timing_sums_it"}
  log.write_text(log.read_text() + log.read_text().splitlines()[-1] + "\n")  # one repeat
  summary = timing.compiles(str(log))
  assert summary.startswith(f"{len(rows) + 1} compiles, ")
  assert f"{len(rows)} distinct programs, 1 of them compiled again (1 compiles," in summary
  assert "| `jit__lambda` | 1 |" in summary


def test_the_budget_line_names_the_time_the_budget_and_the_cpu_and_warns_when_over():
  assert budget_line(6.04, "AMD EPYC, 2 cores (avx2)") == (
      f"test suite: 6.0 min of its {BUDGET_MINUTES:g}-minute budget on AMD EPYC, 2 cores (avx2)")
  over = budget_line(BUDGET_MINUTES + 3.9, "cpu")
  assert over.endswith(" on cpu -- OVER BUDGET by 3.9 min (tests/README.md: where the time "
                       "goes)")


def test_the_emulator_keeps_quiet_when_a_client_hangs_up_and_reports_the_rest(capsys):
  import socketserver
  httpd = socketserver.BaseServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
  _quiet_on_hang_ups(httpd)
  for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"),
                KeyError("bucket")):
    try:
      raise error
    except Exception:  # as socketserver calls handle_error: inside its except block
      httpd.handle_error(None, ("127.0.0.1", 1234))
  err = capsys.readouterr().err
  assert "KeyError: 'bucket'" in err and "BrokenPipeError" not in err and "reset" not in err


def test_the_garbage_collector_is_back_on_after_the_imports():
  """The collector is off while a worker imports the test modules (``pytest_configure``)
  and while the CLI imports jax & co. (``jaxprune.main.main``); ``quiet_gc`` turns it back
  on. Left off, a long run would never free a reference cycle."""
  import gc
  import os
  from jaxprune.main import quiet_gc
  if not os.environ.get("JAXPRUNE_TEST_DEFAULT_GC"):  # this worker, after its collection
    assert gc.isenabled() and gc.get_threshold() == (10_000, 10, 10)
  threshold = gc.get_threshold()
  gc.disable()
  try:
    quiet_gc()
    assert gc.isenabled() and gc.get_threshold() == (10_000, 10, 10)
  finally:
    gc.enable()
    gc.set_threshold(*threshold)
