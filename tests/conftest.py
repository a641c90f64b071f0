"""Shared fixtures: the offline GLUE copy and the offline pre-trained MiniLM-L6.

Also what makes the suite fit its time budget on 2 cores (tests/README.md has the
measurements): one XLA compilation cache and XLA flags that compile fast for the pytest
workers and every process they start, one cache key on every process of a multi-process
run (tests/site), runs shared across pytest-xdist workers (``shared_run``), the slow
tests dealt out first to each worker (``worker_chunks``), the CLI's quieter garbage
collector in the workers, and the closing budget line.
"""

import atexit
import gc
import importlib
import importlib.util
import os
from pathlib import Path
import shutil
import sys
import tempfile
import time

import pytest

# One XLA compilation cache for the whole session, shared with every subprocess the
# tests start (the CLI, pod workers, notebooks) and with every xdist worker (they
# inherit the environment of the controller, which imports this file first): dozens of
# processes compile the same tiny programs, and a warm cache halves a tiny CLI run
# (30.6 s -> 12.8 s on 2 cores). It starts empty in each session, so each program is
# still compiled once here; a JAX_COMPILATION_CACHE_DIR already set is kept. Set before
# anything imports jax.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxprune-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The processes of a multi-process run start together, so each missed the cache and
# compiled every program of the run at the same time (the two processes of a cold tiny
# prune run: 2 x ~8 CPU-s). With JAX's binary sharing, process 0 compiles and hands the
# executable to the others through the run's coordination service (tests/README.md,
# "session 33"). The CLI leaves JAX's default (off): on a real slice every host compiles.
os.environ.setdefault("JAX_SHARE_BINARY_BETWEEN_HOSTS", "true")

# XLA's CPU backend set to compile fast: the tests' programs are tiny, so compiling is
# much of their time (377 of a run's ~860 CPU-seconds with level 0 alone). Level 0 skips
# LLVM's optimisation passes: a tiny prune run's two train steps compile in a third less
# CPU time. Without the MLIR fusion emitters, XLA emits its fusions with the older
# elemental emitter, which skips a pass pipeline per fusion: the suite's compiles take
# half the CPU time (377 -> 195 s; tests/README.md, "2026-12-07"). The results are the
# same programs' results up to float rounding (every test compares with tolerances or
# with runs made under the same flags); bench/ and the CLI keep XLA's defaults.
# JAXPRUNE_TEST_XLA_FLAGS="" turns both off.
TEST_XLA_FLAGS = os.environ.get(
    "JAXPRUNE_TEST_XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false").split()


def _with_test_flags(flags: str, devices: int | None = None) -> str:
  """``XLA_FLAGS`` text with the suite's flags once and, when given, ``devices``."""
  kept = [f for f in flags.split() if f not in TEST_XLA_FLAGS and (
      devices is None or not f.startswith("--xla_force_host_platform_device_count"))]
  count = [] if devices is None else [f"--xla_force_host_platform_device_count={devices}"]
  return " ".join(kept + TEST_XLA_FLAGS + count)


def cpu_env(devices: int | None = None, env: dict | None = None) -> dict:
  """``env`` (default: this process's) for a JAX process on the CPU with ``devices``
  fake devices (None: as ``env`` has them) and the suite's XLA flags."""
  env = dict(os.environ if env is None else env)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=_with_test_flags(env.get("XLA_FLAGS", ""), devices))
  return env


os.environ["XLA_FLAGS"] = _with_test_flags(os.environ.get("XLA_FLAGS", ""))

# tests/site/sitecustomize.py in every process the tests start: on the CPU backend, all
# processes of a multi-process run use the same compilation cache key for a program, as
# on a TPU slice (without it, process 1 of every 2-process run compiled everything).
SITE = str(Path(__file__).parent / "site")
if SITE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
  os.environ["PYTHONPATH"] = os.pathsep.join(
      p for p in (SITE, os.environ.get("PYTHONPATH")) if p)
# This process started before that (pytest without xdist, or xdist's controller): its
# own jax gets the same patches, by path, before anything imports jax.
if os.path.dirname(getattr(sys.modules.get("sitecustomize"), "__file__", None) or "") != SITE:
  _spec = importlib.util.spec_from_file_location("_jaxprune_test_site", f"{SITE}/sitecustomize.py")
  _spec.loader.exec_module(importlib.util.module_from_spec(_spec))

# ../shared/data/glue beside the checkout; JAXPRUNE_GLUE_DIR overrides.
GLUE_DIR = Path(os.environ.get("JAXPRUNE_GLUE_DIR")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
# Small self-written GLUE-layout files for the error paths (see fixtures/README.md).
FIXTURES = Path(__file__).parent / "fixtures" / "glue"
needs_glue = pytest.mark.skipif(
    not GLUE_DIR.is_dir(),
    reason=f"real GLUE files not found at {GLUE_DIR} (set JAXPRUNE_GLUE_DIR)")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
  if not (GLUE_DIR / "MRPC" / "dev.tsv").is_file():
    pytest.skip(f"GLUE data not found at {GLUE_DIR} (set JAXPRUNE_GLUE_DIR to a glue_data folder)")
  return GLUE_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
  from jaxprune.models import ModelNotFoundError, resolve
  try:
    return resolve("minilm-l6")
  except ModelNotFoundError as e:
    pytest.skip(str(e))


def read_mrpc_pairs(glue_dir: Path, n: int) -> list[tuple[str, str]]:
  """The first n (sentence1, sentence2) pairs of MRPC dev (a BOM-prefixed TSV)."""
  lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
  return [tuple(line.split("\t")[3:5]) for line in lines[:n]]


def _send_generation_headers(server_module) -> None:
  """Makes the emulator's media downloads carry ``x-goog-generation`` as real GCS does:
  tensorstore (orbax's OCDBT checkpoints) reads an object's generation from it and
  rejects a download without one ("Malformed StorageGeneration")."""
  from gcp_storage_emulator.handlers import objects
  original = objects.download
  if getattr(original, "sends_generation", False):
    return

  def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # not found: the original handler answered 404
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)

  download.sends_generation = True
  objects.download = download  # objects.get(alt=media) calls it by name
  for route in server_module.HANDLERS:
    for methods in route[1:]:
      for method, handler in list(methods.items()) if isinstance(methods, dict) else []:
        if handler is original:
          methods[method] = download


def _answer_expect_continue(server_module) -> None:
  """Makes the emulator answer ``Expect: 100-continue`` as GCS does. tensorstore's curl
  asks it for every upload over 1 MB (a checkpoint's array data, an export) and, with no
  answer from this HTTP/1.0 server, waited its 1-second timeout before sending the body:
  3 s of a 4-step prune run's 11 s in the bucket (tests/README.md)."""
  handler = server_module.RequestHandler
  original = handler.parse_request
  if getattr(original, "answers_continue", False):
    return

  def parse_request(self) -> bool:
    if not original(self):
      return False
    if self.headers.get("Expect", "").lower() == "100-continue":
      self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return True

  parse_request.answers_continue = True
  handler.parse_request = parse_request


def _skip_metadata_snapshots(storage_module) -> None:
  """Stops the in-memory emulator from re-serialising every object's metadata (all the
  session's objects, as indented JSON) into a ``.meta`` file on each write: that file is
  read only when a storage is created from disk, never in memory, and rewriting it made
  each write O(objects so far): ~2 s of JSON encoding in a fresh emulator for one tiny
  12-step prune run, growing as a session's bucket fills (tests/README.md)."""
  storage = storage_module.Storage
  original = storage._write_config_to_file
  if getattr(original, "skips_memory", False):
    return

  def write_config(self) -> None:
    if not self._use_memory_fs:
      original(self)

  write_config.skips_memory = True
  storage._write_config_to_file = write_config


def _quiet_on_hang_ups(httpd) -> None:
  """Keeps the emulator from printing a traceback when a client hangs up before its
  answer is written (``BrokenPipeError``: a curl request given up and retried). Real GCS
  never sees that as its own error; the traceback in the suite's output looked like a
  failure. Any other error is printed as before."""
  original = httpd.handle_error

  def handle_error(request, client_address) -> None:
    if not isinstance(sys.exc_info()[1], ConnectionError):
      original(request, client_address)

  httpd.handle_error = handle_error


@pytest.fixture(scope="session")
def gcs_bucket():
  """A GCS JSON API on 127.0.0.1 (``gcp-storage-emulator``, in memory) with a bucket.

  Sets what gcsfs (``STORAGE_EMULATOR_HOST``; no gRPC bucket-type probe) and tensorstore
  (``TENSORSTORE_GCS_HTTP_URL``: orbax's array writer) need to talk to it, for this
  process and the subprocesses it starts; yields ``"gs://jaxprune-test"``.
  """
  import logging
  import socket
  server_module = pytest.importorskip("gcp_storage_emulator.server",
                                      reason="needs the test extra (gcp-storage-emulator)")
  pytest.importorskip("gcsfs", reason="needs the gcs extra (gcsfs)")
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are normal
  _send_generation_headers(server_module)
  _skip_metadata_snapshots(importlib.import_module("gcp_storage_emulator.storage"))
  _answer_expect_continue(server_module)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = server_module.create_server("127.0.0.1", port, in_memory=True,
                                       default_bucket="jaxprune-test")
  server.start()
  _quiet_on_hang_ups(server._api._httpd)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield "gs://jaxprune-test"
  server.stop()
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope="session")
def hub(minilm_dir):
  """A Hugging Face hub on 127.0.0.1 (``tests/hub_server.py``) serving the offline
  MiniLM-L6 as ``sentence-transformers/all-MiniLM-L6-v2``; set ``HF_ENDPOINT`` to its
  ``url`` (and ``HF_HOME`` to a fresh folder) for ``snapshot_download`` to use it."""
  from hub_server import HubServer
  with HubServer({"sentence-transformers/all-MiniLM-L6-v2": minilm_dir}) as server:
    yield server


def shared_run(tmp_path_factory, name: str, build) -> Path:
  """A folder that ``build(folder)`` fills once per test session, whichever pytest-xdist
  worker asks first (the others wait on a file lock, then reuse it); without xdist,
  once per session as a session fixture. A failed build leaves nothing behind, so the
  next asker builds again and fails with its own error."""
  from filelock import FileLock
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the workers' base folders share this parent
  folder = root / f"shared-{name}"
  with FileLock(f"{folder}.lock"):
    if not (folder / ".complete").is_file():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      try:
        build(folder)
      except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
      (folder / ".complete").write_text("")
  return folder


@pytest.fixture(scope="session")
def one_process_prune_run(tmp_path_factory, glue_dir, minilm_dir):
  """A tiny teacher, then the tiny prune job (padding trim and length grouping on) as 1
  process x 4 CPU devices: the reference that every multi-process run (tests of the
  pod runtime and of the launcher's fake pod) must match. Returns (the prune job's
  flags without --workdir, its workdir, its final checkpoint's arrays)."""
  from test_multiprocess import BASE, STEPS, _checkpoint, _start
  from test_sharding import wait
  base = [*BASE, f"--config.glue_dir={glue_dir}"]  # absolute: workers run elsewhere

  def build(tmp: Path) -> None:
    teacher = tmp / "teacher"
    wait([_start(["--mode=finetune", *base, f"--workdir={teacher}"], 1,
                 tmp / "teacher.log")], tmp)
    wait([_start(["--mode=prune", *base, f"--config.teacher={teacher}",
                  f"--workdir={tmp / 'one'}"], 4, tmp / "one.log")], tmp)

  tmp = shared_run(tmp_path_factory, "one_process", build)
  args = ["--mode=prune", *base, f"--config.teacher={tmp / 'teacher'}"]
  return args, tmp / "one", _checkpoint(tmp / "one", STEPS)


# ------------------------------------------------------------------ scheduling, budget

# The suite's time budget on the project's 2-core machine, shown (never enforced: the
# machines are noisy) in the last line of every run.
BUDGET_MINUTES = 11.0
_START = time.time()


def worker_chunks(items: list, workers: int) -> list:
  """``items`` reordered so that each of pytest-xdist's ``workers`` starts on its share of
  the tests marked ``slow`` and ends on short ones.

  ``--dist worksteal`` first hands each worker one contiguous chunk of the collection
  (``len // workers`` items, in order), then an idle worker steals the second half of the
  longest queue, from its end. With every slow test first in the collection, worker 0's
  chunk held all of them: worker 1 ran short tests, then stole, and the two met inside
  the slow block, so the run ended on a long test with the other worker idle (33 s of
  598, tests/README.md). Here the slow tests are dealt round-robin (in collection
  order) into the chunks, each chunk's slow ones first, so that steals take short tests
  and both workers end on short ones. Without xdist (``workers`` 1): slow first.
  """
  slow = [i for i in items if i.get_closest_marker("slow") is not None]
  quick = [i for i in items if i.get_closest_marker("slow") is None]
  chunks, left = [], len(items)
  for w in range(workers):  # worksteal's sizes: what is left // the workers left
    size = left // (workers - w)
    chunk = slow[w::workers]
    chunks.append((chunk, max(0, size - len(chunk))))
    left -= size
  out, taken = [], 0
  for chunk, room in chunks:
    out += chunk + quick[taken:taken + room]
    taken += room
  return out + quick[taken:]


def pytest_collection_modifyitems(session, config, items):
  items[:] = worker_chunks(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def budget_line(minutes: float, cpu: str) -> str:
  """The suite's closing line: its time against ``BUDGET_MINUTES`` and the CPU it ran
  on (machines of the same kind differ: tests/README.md), with a plain warning
  when it is over."""
  line = f"test suite: {minutes:.1f} min of its {BUDGET_MINUTES:g}-minute budget on {cpu}"
  if minutes > BUDGET_MINUTES:
    line += (f" -- OVER BUDGET by {minutes - BUDGET_MINUTES:.1f} min (tests/README.md: "
             "where the time goes)")
  return line


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  if hasattr(config, "workerinput"):  # an xdist worker: the controller reports
    return
  spec = importlib.util.spec_from_file_location(
      "_train_step", Path(__file__).resolve().parents[1] / "bench" / "train_step.py")
  bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # (dataclasses)
  spec.loader.exec_module(bench)
  terminalreporter.write_line(budget_line((time.time() - _START) / 60, bench.cpu_model()))


def pytest_configure(config):
  """No garbage collection while a worker imports the test modules (and with them jax,
  torch and transformers): ~1,030 collections took 2.0-2.2 of the ~11 CPU-s of a
  collection (``gc.callbacks``, tests/README.md "session 37"). `pytest_collection_finish`
  turns it back on. The xdist controller collects nothing, and keeps Python's default."""
  controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(
      config, "workerinput")
  if not controller and not os.environ.get("JAXPRUNE_TEST_DEFAULT_GC"):
    gc.disable()


def pytest_collection_finish(session):
  """The workers' garbage collector as the CLI's (``jaxprune.main.quiet_gc``): a worker
  holds every test module, jax, torch and transformers, and each full collection walked
  them all again."""
  if os.environ.get("JAXPRUNE_TEST_DEFAULT_GC"):
    return
  from jaxprune.main import quiet_gc
  quiet_gc()
