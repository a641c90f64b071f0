"""Paths a user names, local or ``gs://``: one place that reads, writes and publishes them.

Every path of a run (workdir, checkpoints, metrics, exports, teacher, ``glue_dir``,
``aug_dir``, ``--out``) goes through this module, so a TPU-pod run can keep its work
directory in a bucket. It uses ``etils.epath`` (what orbax uses for checkpoints), which
reaches ``gs://`` through ``gcsfs``.

* Reading: `local_copy` gives a local ``pathlib.Path`` of any file or folder (a
  ``gs://`` one is downloaded into a cache first), for libraries that only read local
  files (safetensors, tokenizers, the TSV reader).
* Writing: `staged_dir` and `staged_file` yield a local temporary path and publish it
  only when the block succeeds. Locally that is an atomic rename; on GCS, where every
  object appears only when its upload is complete, the files are uploaded with the
  folder's ``config.json`` (the file readers look for) last, so a crash never leaves a
  half-written summary or export. `write_text` does the same for one text file.

Checkpoints are not staged: orbax writes them (atomically) itself.

Example::

  with staged_dir("gs://bucket/run/hf") as tmp:
    (tmp / "config.json").write_text("{}")
  local = local_copy("gs://bucket/run/hf")          # a pathlib.Path in the cache
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Pathish", "path", "is_remote", "exists", "is_dir", "is_file", "local_copy",
           "staged_dir", "staged_file", "upload", "write_text", "read_text", "cache_dir",
           "files", "tree_bytes"]

Pathish = str | os.PathLike
# Files uploaded last when publishing a folder: readers take their presence as "complete".
_LAST = ("config.json", "summary.json")


def is_remote(p: Pathish) -> bool:
  """Whether ``p`` is a URL (``gs://...``) rather than a local path."""
  return "://" in str(p)


def path(p: Pathish):
  """``p`` as an ``epath.Path`` (remote) or an absolute-or-relative ``pathlib.Path``."""
  if is_remote(p):
    from etils import epath  # gcsfs and friends: only for remote paths
    return epath.Path(str(p))
  return Path(p)


def exists(p: Pathish) -> bool:
  return path(p).exists()


def is_dir(p: Pathish) -> bool:
  return path(p).is_dir()


def is_file(p: Pathish) -> bool:
  return path(p).is_file()


def read_text(p: Pathish) -> str:
  return path(p).read_text()


def files(p: Pathish) -> list:
  """Every file below folder ``p`` (recursively; GCS has no recursive glob in epath)."""
  out = []
  for child in path(p).iterdir():
    out.extend(files(child) if child.is_dir() else [child])
  return out


def tree_bytes(p: Pathish) -> int:
  """Total size of the files below folder ``p``."""
  stats = [f.stat() for f in files(p)]  # epath's StatResult has .length, os's .st_size
  return sum(getattr(s, "length", None) or getattr(s, "st_size", 0) for s in stats)


def cache_dir() -> Path:
  """Where remote inputs are downloaded: ``$JAXPRUNE_CACHE`` or ``~/.cache/jaxprune``."""
  return Path(os.environ.get("JAXPRUNE_CACHE") or Path.home() / ".cache" / "jaxprune")


def local_copy(p: Pathish) -> Path:
  """A local path with the contents of ``p`` (a ``gs://`` file or folder is downloaded
  into `cache_dir`, replacing an older copy); local paths are returned unchanged."""
  if not is_remote(p):
    return Path(p)
  src = path(p)
  key = hashlib.sha256(str(p).rstrip("/").encode()).hexdigest()[:16]
  dst = cache_dir() / "remote" / key / src.name
  if dst.exists():
    shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
  dst.parent.mkdir(parents=True, exist_ok=True)
  if src.is_dir():
    for f in files(src):
      target = dst / str(f)[len(str(src)):].lstrip("/")
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(f.read_bytes())
  elif src.exists():
    dst.write_bytes(src.read_bytes())
  else:
    raise FileNotFoundError(f"{p}: no such file or folder")
  return dst


def upload(local: Path, target) -> None:
  """Copies a local file or folder's files to a remote path (``_LAST`` files last)."""
  if local.is_file():
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(local.read_bytes())
    return
  files = sorted((f for f in local.rglob("*") if f.is_file()),
                 key=lambda f: (f.name in _LAST, str(f)))
  target.mkdir(parents=True, exist_ok=True)
  for f in files:
    dst = target / str(f.relative_to(local))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(f.read_bytes())


@contextlib.contextmanager
def staged_dir(out: Pathish) -> Iterator[Path]:
  """Yields a local temporary folder that becomes ``out`` only if the block succeeds
  (replacing what was there), so a failed write leaves nothing half-written."""
  if is_remote(out):
    with tempfile.TemporaryDirectory(prefix="jaxprune-stage-") as tmp:
      yield Path(tmp)
      target = path(out)
      if target.exists():
        target.rmtree()
      upload(Path(tmp), target)
    return
  out = Path(out)
  tmp = out.with_name(out.name + ".tmp-stage")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  try:
    yield tmp
    if out.exists():
      shutil.rmtree(out)
    tmp.rename(out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)


@contextlib.contextmanager
def staged_file(out: Pathish) -> Iterator[Path]:
  """Yields a local temporary file name that becomes ``out`` only if the block succeeds."""
  if is_remote(out):
    with tempfile.TemporaryDirectory(prefix="jaxprune-stage-") as tmp:
      local = Path(tmp) / path(out).name
      yield local
      upload(local, path(out))
    return
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  try:
    yield tmp
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(out: Pathish, text: str) -> None:
  """Writes a text file atomically (see `staged_file`)."""
  with staged_file(out) as tmp:
    tmp.write_text(text)
