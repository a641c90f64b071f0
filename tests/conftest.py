"""Shared fixtures: the offline GLUE copy and the offline pre-trained MiniLM-L6."""

import atexit
import os
from pathlib import Path
import shutil
import tempfile

import pytest

# One XLA compilation cache for the whole session, shared with every subprocess the
# tests start (the CLI, pod workers, notebooks): dozens of them compile the same tiny
# programs, and a warm cache halves a tiny CLI run (30.6 s -> 12.8 s on 2 cores). It
# starts empty in each session, so each program is still compiled once here; a
# JAX_COMPILATION_CACHE_DIR already set is kept. Set before anything imports jax.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxprune-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

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
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = server_module.create_server("127.0.0.1", port, in_memory=True,
                                       default_bucket="jaxprune-test")
  server.start()
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
def one_process_prune_run(tmp_path_factory, glue_dir, minilm_dir):
  """A tiny teacher, then the tiny prune job (padding trim and length grouping on) as 1
  process x 4 CPU devices: the reference that every multi-process run (tests of the
  pod runtime and of the launcher's fake pod) must match. Returns (the prune job's
  flags without --workdir, its workdir, its final checkpoint's arrays)."""
  from test_multiprocess import BASE, STEPS, _checkpoint, _start
  from test_sharding import wait
  tmp = tmp_path_factory.mktemp("one_process")
  base = [*BASE, f"--config.glue_dir={glue_dir}"]  # absolute: workers run elsewhere
  teacher = tmp / "teacher"
  wait([_start(["--mode=finetune", *base, f"--workdir={teacher}"], 1, tmp / "teacher.log")],
       tmp)
  args = ["--mode=prune", *base, f"--config.teacher={teacher}"]
  wait([_start([*args, f"--workdir={tmp / 'one'}"], 4, tmp / "one.log")], tmp)
  return args, tmp / "one", _checkpoint(tmp / "one", STEPS)
