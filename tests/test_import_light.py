"""The package surface: a light import, the public names, docstring and docs examples."""

import doctest
import importlib
from pathlib import Path
import re
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("flax", "ml_collections", "orbax", "transformers", "tensorflow", "torch")


def test_import_pulls_only_jax_numpy_optax():
  code = ("import sys, jaxprune; "
          f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == "[]", f"importing jaxprune pulled in {out}"


@pytest.mark.parametrize("module", ["jaxprune", "jaxprune.launch.cli", "jaxprune.paths"])
def test_the_package_the_launcher_and_paths_start_without_jax(module):
  """The public names load on first use: ``jaxprune-tpu`` on a laptop, and the log copy
  on every TPU worker, start in a fraction of a second instead of importing jax."""
  code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == "[]", f"importing {module} pulled in {out}"


def test_public_names():
  jaxprune = importlib.import_module("jaxprune")
  for name in jaxprune.__all__:
    assert hasattr(jaxprune, name), name
  assert set(jaxprune.__all__) <= set(dir(jaxprune))
  namespace = {}
  exec("from jaxprune import *", namespace)
  assert set(jaxprune.__all__) <= set(namespace)
  with pytest.raises(AttributeError, match="no attribute 'prune_by_magnitud'"):
    jaxprune.prune_by_magnitud  # noqa: B018
  for name in ("select", "magnitude_masks", "apply_masks", "sparsity_report", "NM", "Blocks",
               "cubic_sparsity", "prune_by_magnitude", "find_masks", "bert_adam",
               "adamw_warmup_linear", "BERT_ENCODER_MATRICES"):
    assert name in jaxprune.__all__, name


@pytest.mark.parametrize("module", ["masks", "schedules", "transforms", "optim"])
def test_docstring_examples(module):
  mod = importlib.import_module(f"jaxprune.{module}")
  result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0, result


def documented_runs(markdown: str) -> list[tuple[str, str]]:
  """(code, expected stdout) of every ```python block followed by "prints" and a block."""
  no_fence = r"(?:(?!```).)*"
  pattern = rf"```python\n({no_fence})```\n\s*prints{no_fence}```\n({no_fence})```"
  return re.findall(pattern, markdown, flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["README.md", "docs/pruning.md"])
def test_documented_examples_print_what_the_docs_say(doc, tmp_path):
  runs = documented_runs((ROOT / doc).read_text())
  assert runs, f"no example with printed output found in {doc}"
  for code, expected in runs:
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == expected.split(), out.stdout
