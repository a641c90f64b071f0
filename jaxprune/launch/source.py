"""What ``setup`` installs: a local checkout as a reproducible tarball, or a git ref; and
the stamp (a hash of source, jax version and extras) that makes setup idempotent.

Example::

  data = local_tarball(checkout_root())   # same bytes for the same files
  stamp(data, jax_version="0.10.2", extras="gcs")  # '5c0e...' (16 hex digits)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
from pathlib import Path
import tarfile

from jaxprune.launch.settings import LaunchError

__all__ = ["checkout_root", "local_tarball", "stamp", "jax_version"]

# What pip needs to install jaxprune, plus configs/ (the jobs' --config files).
TOP_FILES = ("pyproject.toml", "README.md")
DIRS = ("jaxprune", "configs")
SKIP_PARTS = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo")


def checkout_root() -> Path:
  """The source checkout this launcher runs from; a ``LaunchError`` when installed as a
  plain package (then ``setup --ref`` installs from git instead).

  Example: ``(checkout_root() / "pyproject.toml").is_file()``.
  """
  root = Path(__file__).resolve().parents[2]
  pyproject = root / "pyproject.toml"
  if not pyproject.is_file() or 'name = "jaxprune"' not in pyproject.read_text():
    raise LaunchError(f"setup --local needs a source checkout of jaxprune (none around "
                      f"{Path(__file__).resolve().parents[1]}); use --ref GIT_REF")
  return root


def _files(root: Path) -> list[Path]:
  found = [root / name for name in TOP_FILES if (root / name).is_file()]
  for folder in DIRS:
    found += [p for p in (root / folder).rglob("*") if p.is_file()
              and not any(part in SKIP_PARTS for part in p.relative_to(root).parts)
              and p.suffix not in SKIP_SUFFIXES]
  return sorted(found)


def local_tarball(root: Path) -> bytes:
  """A ``.tar.gz`` of the checkout's package, configs, pyproject and README; the same
  files give the same bytes (no times, owners or order from the file system).

  Example: ``local_tarball(checkout_root())[:2] == b"\\x1f\\x8b"``.
  """
  raw = io.BytesIO()
  with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for path in _files(root):
      info = tarfile.TarInfo(path.relative_to(root).as_posix())
      data = path.read_bytes()
      info.size, info.mtime = len(data), 0
      info.mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
      tar.addfile(info, io.BytesIO(data))
  out = io.BytesIO()
  with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
    gz.write(raw.getvalue())
  return out.getvalue()


def stamp(source: bytes | str, jax_version: str, extras: str) -> str:
  """16 hex digits naming one installation (source bytes or ``repo@ref``, jax, extras).

  Example: ``stamp("https://example.org/jaxprune.git@v0.1.0", "0.10.2", "gcs")``.
  """
  h = hashlib.sha256(source.encode() if isinstance(source, str) else source)
  h.update(f"\0jax[tpu]=={jax_version}\0{extras}".encode())
  return h.hexdigest()[:16]


def jax_version() -> str:
  """The jax version installed here (the one the project resolves), read without
  importing jax; a ``LaunchError`` when jax is not installed (pass --jax-version)."""
  try:
    return importlib.metadata.version("jax")
  except importlib.metadata.PackageNotFoundError:
    raise LaunchError("jax is not installed here, so its version cannot be pinned on "
                      "the workers: pass --jax-version") from None
