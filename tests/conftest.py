"""Shared fixtures: the offline GLUE copy and the offline pre-trained MiniLM-L6."""

import os
from pathlib import Path

import pytest

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
