"""bench/accelerator_check.py: its CPU smoke mode runs every section (so the GPU check,
run only when a GPU is lent, does not rot), and its pieces compute what they say."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from conftest import cpu_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import accelerator_check as check  # noqa: E402


@pytest.mark.slow
def test_smoke_mode_runs_every_section_on_the_cpu_without_ml_collections(tmp_path):
  # The GPU image has no ml-collections: the check must not need it (nor jaxprune's config).
  code = ("import runpy, sys; sys.modules['ml_collections'] = None; "
          f"sys.argv = ['accelerator_check.py', {str(tmp_path)!r}, '--smoke']; "
          "runpy.run_path('bench/accelerator_check.py', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cpu_env(1),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((tmp_path / "accelerator_check.json").read_text())
  assert result["smoke"] and result["failed"] == {}
  env = result["environment"]
  assert env["platform"] == "cpu" and env["jax"] and env["torch"] and not env["cuda"]
  assert env["peak_tflops"] == {"float32": None, "bfloat16": None}  # no datasheet for a CPU

  assert [(r["shape"], r["dtype"]) for r in result["train"]] == [("tiny b4", "bfloat16")]
  for row in result["train"]:
    assert set(row["steps"]) == {"jax prune", "jax dense", "torch prune"}
    prune = row["steps"]["jax prune"]
    assert prune["event_seconds"] > 0  # one mask event among the timed steps
    assert prune["amortized_seconds"] > prune["seconds"] > 0
    assert row["steps"]["jax dense"]["event_seconds"] is None and prune["mfu"] is None
    assert row["jax_over_torch"] > 0 and np.isfinite(row["prune_overhead_amortized"])
    assert row["model_tflop_per_step"] > 0 and row["matmul_tflops"] > 0

  assert [(r["sparsity"], r["batch"]) for r in result["infer"]] == [("2:4", 2), ("0.9", 2)]
  for row in result["infer"]:
    assert row["errors"] == {}
    assert set(row["backends"]) == {"jax-dense", "jax-bcsr", "torch-dense", "torch-csr"}
    for name, backend in row["backends"].items():
      assert backend["ok"] and backend["ms"] > 0 and backend["speedup"] > 0, name
    assert row["backends"]["jax-dense"]["error"] == 0 and row["backends"]["jax-dense"][
        "speedup"] == 1

  c = result["correctness"]
  assert c["masks_equal"] and c["mask_entries_different"] == 0 and c["mask_entries"] > 0
  assert c["params_max_rel_diff"] == 0  # CPU against CPU: the same program, bit for bit
  assert c["student_sparsity"] == pytest.approx(0.5, abs=0.01)
  assert c["artifact_roundtrip"] == {"default": True, "cpu": True}
  assert all(np.isfinite(v) for r in c["losses"].values() for v in r.values())

  md = (tmp_path / "accelerator_check.md").read_text()
  for heading in ("## Train step", "## Sparse inference", "## Correctness",
                  "| tiny b4 | bfloat16 | jax prune |", "Masks equal: **True**"):
    assert heading in md


@pytest.mark.parametrize("kind,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4), ("NVIDIA H100 PCIe", "float32", 378.0),
    ("NVIDIA H200", "bfloat16", 989.4), ("NVIDIA A100-SXM4-40GB", "float32", 156.0),
    ("cpu", "float32", None), ("TPU v4", "bfloat16", None)])
def test_chip_peak_reads_the_datasheet_of_the_named_chip(kind, dtype, peak):
  assert check.chip_peak(kind, dtype) == peak


def test_compare_runs_counts_mask_entries_that_differ():
  masks = {"a": np.array([[True, False], [True, True]]), "b": np.array([False, True])}
  params = {"a": np.array([[1.0, 0.0], [2.0, -4.0]]), "b": np.array([0.0, 3.0])}
  same = check.compare_runs(dict(masks=masks, params=params), dict(masks=masks, params=params))
  assert same == dict(masks_equal=True, mask_entries_different=0, mask_entries=6,
                      params_max_rel_diff=0.0)
  other = {"a": masks["a"], "b": np.array([True, True])}
  moved = {"a": params["a"] + np.array([[0, 0], [0, 0.4]]), "b": params["b"]}
  diff = check.compare_runs(dict(masks=masks, params=moved), dict(masks=other, params=params))
  assert diff["masks_equal"] is False and diff["mask_entries_different"] == 1
  assert diff["params_max_rel_diff"] == pytest.approx(0.1)  # 0.4 / max |a| = 4
