"""One prepared check of jaxprune on an accelerator: training speed, bf16, pruning
overhead, sparse inference and CPU-equal masks, written to a folder.

Run on a machine with one GPU (made to fit in 8 minutes of an H100/H200, most of it
compiling; not yet measured there; nothing is downloaded: random weights of the real
shapes)::

  python bench/accelerator_check.py OUT            # -> OUT/accelerator_check.{json,md}
  python bench/accelerator_check.py OUT --smoke    # tiny shapes, bf16 only, ~45 s on a CPU

``make test`` runs ``--smoke`` on the CPU (tests/test_bench.py), so the code paths that
the GPU run takes stay alive between the rare sessions that have a GPU.

Sections (``--sections``; the JSON and markdown are rewritten after every row, so a run
cut short keeps what it measured):

* ``train``: the SparseBERT train step (``distill_prune``: prune + distill) and the dense
  distillation step of `bench/train_step.py`, for MiniLM-L6 at b32/L128 and BERT-base
  at b32/L128 and b128/L128, in float32 (JAX's default precision: TF32 matmuls on NVIDIA
  GPUs since Ampere; PyTorch is set to the same, ``set_float32_matmul_precision("high")``)
  and in bfloat16 (``precision=bfloat16``; PyTorch under ``torch.autocast``). Per row:
  seconds per step, examples/s, model TFLOP/s and MFU against the chip's dense peak
  (``PEAK_TFLOPS``) and against a matmul measured under the same load; the eager PyTorch
  step on the same device side by side (examples/s ratio); the pruning overhead on
  non-event steps and amortised over one mask event every ``EVENT_PERIOD`` steps.
* ``infer``: the BERT-base classifier (smoke: tiny) magnitude-pruned to 2:4, 90% and 95%,
  exported with `jaxprune.export.export_sparse` and run from that file through
  `jaxprune.infer.make_runner` at batch 1, 8 and 64 (seq 128): ``jax-dense`` against
  ``jax-bcsr``; on CUDA ``torch-dense`` fp16 against ``torch-csr`` fp16 and, on the 2:4
  export, ``torch-2:4`` (``to_sparse_semi_structured``). Each backend's logits are checked
  against ``jax-dense`` float32 within ``TOLERANCE`` (max abs difference over max(1,
  max |logit|)).
* ``correctness``: the tiny prune run end to end (`correctness_run`: fine-tune a teacher,
  prune + distill a student to 50% over 4 mask events, export the sparse artifact and read
  it back) on the default device and on the CPU, at ``highest`` matmul precision; the
  masks must be equal and the parameters close.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))       # train_step, export_infer
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # jaxprune from a checkout

import train_step as ts  # noqa: E402  (bench/train_step.py)

SECTIONS = ("train", "infer", "correctness")
# (name, shape) of the training rows; --smoke uses SMOKE_TRAIN.
TRAIN = (("minilm b32", ts.Shape(6, 384, 12, 1536, batch=32, seq=128)),
         ("bert-base b32", ts.Shape(12, 768, 12, 3072, batch=32, seq=128)),
         ("bert-base b128", ts.Shape(12, 768, 12, 3072, batch=128, seq=128)))
SMOKE_TRAIN = (("tiny b4", ts.Shape(1, 32, 4, 64, batch=4, seq=16, vocab=512)),)
INFER_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072)
SMOKE_INFER_SHAPE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, vocab_size=512)
SPARSITIES, SMOKE_SPARSITIES = ("2:4", "0.9", "0.95"), ("2:4", "0.9")
BATCHES, SMOKE_BATCHES, SEQ, SMOKE_SEQ = (1, 8, 64), (2,), 128, 16
DTYPES = ("float32", "bfloat16")
SMOKE_DTYPES = ("bfloat16",)  # the mixed-precision path; float32 is the rest of make test
# Dense peak TFLOP/s per chip (NVIDIA's datasheets, without structured sparsity): float32
# rows at TF32 (JAX's and our PyTorch setting's matmul precision), bfloat16 rows at BF16.
PEAK_TFLOPS = {"H100 PCIe": {"float32": 378.0, "bfloat16": 756.0},
               "H100": {"float32": 494.7, "bfloat16": 989.4},   # SXM
               "H200": {"float32": 494.7, "bfloat16": 989.4},
               "A100": {"float32": 156.0, "bfloat16": 312.0}}
# Logits of a backend against jax-dense float32: max |a - b| / max(1, max |b|).
TOLERANCE = {"float32": 1e-3, "float16": 5e-2}


def chip_peak(device_kind: str, dtype: str) -> float | None:
  """The datasheet's dense TFLOP/s of ``device_kind`` (e.g. "NVIDIA H100 80GB HBM3")."""
  for name, peaks in PEAK_TFLOPS.items():  # the more specific names first
    if all(part in device_kind for part in name.split()):
      return peaks[dtype]
  return None


def environment() -> dict[str, Any]:
  """The device, its peak, and the versions every figure depends on."""
  import jax
  import jaxlib
  dev = jax.devices()[0]
  env = dict(platform=dev.platform, device_kind=dev.device_kind, device_count=jax.device_count(),
             host_cpu=ts.cpu_model(), python=platform.python_version(), jax=jax.__version__,
             jaxlib=jaxlib.__version__, torch=None, cuda=False)
  try:
    import torch
    env.update(torch=torch.__version__, cuda=torch.cuda.is_available())
    if env["cuda"]:
      env["torch_device"] = torch.cuda.get_device_name()
  except ImportError:
    pass
  env["peak_tflops"] = {d: chip_peak(dev.device_kind, d) for d in DTYPES}
  return env


# ------------------------------------------------------------------------------ train


def train_rows(shapes, dtypes, steps: int, torch_device: str | None, log,
               peak_n: int = 4096) -> Iterator[dict]:
  """One row per (shape, dtype): jax prune / jax dense / torch prune, side by side."""
  import jax
  peak_kind = jax.devices()[0].device_kind
  for name, s in shapes:
    for dtype in dtypes:
      log(f"train {name} {dtype}")
      m = ts.measure_shape(s, steps, torch_device is not None, dtype,
                           torch_device or "cpu", log=log, peak_n=peak_n)
      flops = ts.step_flops(s)
      peak = chip_peak(peak_kind, dtype)
      row = dict(shape=name, batch=s.batch, seq=s.seq, layers=s.layers, hidden=s.hidden,
                 dtype=dtype, model_tflop_per_step=flops / 1e12,
                 xla_tflop_per_step=(m["xla_flops"] or 0) / 1e12,
                 matmul_tflops=m["peak"] / 1e3, chip_peak_tflops=peak,
                 build_seconds=m["build_seconds"], steps={})
      for label, tm in m["timings"].items():
        row["steps"][label] = dict(
            seconds=tm.median, event_seconds=statistics.median(tm.events) if tm.events else None,
            amortized_seconds=tm.amortized, examples_per_s=s.batch / tm.amortized,
            tflops=flops / tm.median / 1e12,
            mfu=flops / tm.median / 1e12 / peak if peak else None,
            of_matmul=flops / tm.median / 1e9 / m["peak"])
      jp, jd = m["timings"]["jax prune"], m["timings"]["jax dense"]
      row["prune_overhead"] = jp.median / jd.median - 1
      row["prune_overhead_amortized"] = jp.amortized / jd.median - 1
      if "torch prune" in m["timings"]:
        row["jax_over_torch"] = m["timings"]["torch prune"].amortized / jp.amortized
      yield row


# ------------------------------------------------------------------------------ infer


def _backends(sparsity: str, cuda: bool) -> list[tuple[str, str, str]]:
  """(label, infer backend, dtype) pairs timed for one export."""
  out = [("jax-dense", "jax-dense", "float32"), ("jax-bcsr", "jax-bcsr", "float32")]
  if cuda:
    out += [("torch-dense fp16", "torch-dense", "float16"),
            ("torch-csr fp16", "torch-csr", "float16")]
    if sparsity == "2:4":
      out.append(("torch-2:4 fp16", "torch-2:4", "float16"))
  else:
    out += [("torch-dense", "torch-dense", "float32"), ("torch-csr", "torch-csr", "float32")]
  return out


def infer_rows(shape: dict, sparsities, batches, seq: int, reps: int, cuda: bool,
               log) -> Iterator[dict]:
  """Per sparsity and batch: ms per batch of every backend from the exported artifact,
  its speed-up over its framework's dense path, and its logits' error against dense
  (jax-dense computed at ``highest`` matmul precision: true float32, not TF32)."""
  import jax
  from jaxprune import export, infer
  from export_infer import interleaved, pruned_params  # bench/export_infer.py
  with tempfile.TemporaryDirectory() as tmp:
    for sparsity in sparsities:
      params, masks, config = pruned_params(shape, sparsity)
      path = Path(tmp) / f"bert-{sparsity.replace(':', 'of')}.safetensors"
      size = export.export_sparse(params, masks, path, "float16" if cuda else "float32",
                                  config=config)
      runners, errors = {}, {}
      for label, backend, dtype in _backends(sparsity, cuda):
        try:
          runners[label] = (infer.make_runner(path, backend, dtype=dtype), dtype)
        except Exception as e:  # noqa: BLE001 -- a backend that fails here is a finding
          errors[label] = f"{type(e).__name__}: {e}"
          log(f"infer {sparsity} {label}: {errors[label]}")
      for b in batches:
        rng = np.random.default_rng(b)
        ids = rng.integers(0, config.vocab_size, (b, seq))
        args = (ids, np.ones_like(ids), np.zeros_like(ids))
        with jax.default_matmul_precision("highest"):  # a program of its own
          ref = np.asarray(runners["jax-dense"][0](*args), np.float32)
        fns, row = {}, dict(sparsity=sparsity, batch=b, seq=seq, artifact_mib=size.file_bytes
                            / 2**20, backends={}, errors=dict(errors))
        for label, (run, dtype) in runners.items():
          try:
            out = np.asarray(run(*args), np.float32)
          except Exception as e:  # noqa: BLE001
            row["errors"][label] = f"{type(e).__name__}: {e}"
            log(f"infer {sparsity} b{b} {label}: {row['errors'][label]}")
            continue
          err = float(np.max(np.abs(out - ref)) / max(1.0, float(np.max(np.abs(ref)))))
          row["backends"][label] = dict(dtype=dtype, error=err, tolerance=TOLERANCE[dtype],
                                        ok=err <= TOLERANCE[dtype])
          fns[label] = functools.partial(run, *args)
        for label, seconds in interleaved(fns, reps).items():
          row["backends"][label].update(ms=seconds * 1e3)
        for label, r in row["backends"].items():
          dense = "jax-dense" if label.startswith("jax") else next(
              (k for k in row["backends"] if k.startswith("torch-dense")), None)
          r["speedup"] = row["backends"][dense]["ms"] / r["ms"] if dense else None
        log(f"infer {sparsity} b{b}: " + ", ".join(
            f"{k} {v['ms']:.2f} ms" for k, v in row["backends"].items()))
        yield row


# ------------------------------------------------------------------------ correctness


def _tiny_batches(n: int, batch: int = 8, seq: int = 16, vocab: int = 512):
  """Fixed batches whose label a model can learn (is token 7 in the first half?)."""
  rs = np.random.RandomState(0)
  out = []
  for _ in range(n):
    ids = rs.randint(8, vocab, (batch, seq)).astype(np.int32)
    labels = rs.randint(0, 2, batch).astype(np.int32)
    ids[labels == 1, rs.randint(1, seq // 2)] = 7
    out.append(dict(input_ids=ids, attention_mask=np.ones_like(ids),
                    token_type_ids=np.zeros_like(ids), labels=labels,
                    weight=np.ones(batch, np.float32)))
  return out


def correctness_run(device: Any, workdir: Path, steps: int = 16) -> dict[str, Any]:
  """The tiny prune run on ``device``: fine-tune a 1-layer teacher for ``steps`` steps,
  prune + distill a fresh student to 50% over ``steps`` steps (4 mask events), export the
  sparse artifact to ``workdir`` and load it back. Returns host numpy masks, student
  params, the loaded artifact's tensors, and the losses."""
  import jax
  import optax
  from jaxprune import export, masks, optim, schedules, sharding, train, transforms
  from jaxprune.models import bert
  config = bert.BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64, num_labels=2)
  model = bert.BertForSequenceClassification(config)
  mesh = sharding.make_mesh((1, 1), devices=[device])
  shardings = sharding.param_shardings(bert.logical_axes(model), mesh)
  batches = [sharding.global_batch(b, mesh) for b in _tiny_batches(steps)]
  with jax.default_matmul_precision("highest"):
    tx = optim.bert_adam(1e-3)
    state, state_sh = sharding.create_sharded_state(ts.random_params(model, 1), tx,
                                                    jax.random.key(0), shardings, mesh)
    step = sharding.jit_train_step(
        train.make_train_step(model, tx, mode="finetune", learning_rate=1e-3), mesh, state_sh)
    for b in batches:
      state, m = step(state, None, b)
    teacher, teacher_loss = state.params, float(m["loss"])
    schedule = schedules.cubic_sparsity(0.5, steps, events=4)
    tx = optax.chain(optim.bert_adam(1e-3),
                     transforms.prune_by_magnitude(schedule, masks.BERT_ENCODER_MATRICES))
    state, state_sh = sharding.create_sharded_state(ts.random_params(model, 2), tx,
                                                    jax.random.key(1), shardings, mesh)
    step = sharding.jit_train_step(
        train.make_train_step(model, tx, mode="distill_prune", teacher=model,
                              learning_rate=1e-3), mesh, state_sh, shardings)
    for t, b in enumerate(batches, start=1):
      state, m = step(state, teacher, b, schedule.is_event(t))
  host = lambda tree: jax.tree.map(np.asarray, sharding.to_host(tree))
  params, student_masks = host(state.params), host(transforms.find_masks(state.opt_state))
  path = workdir / "student.safetensors"
  export.export_sparse(params, student_masks, path, config=config)
  loaded, masked = export.load_sparse(path), masks.apply_masks(params, student_masks)
  roundtrip = jax.tree.all(jax.tree.map(np.array_equal, loaded, host(masked)))
  return dict(masks=student_masks, params=params, roundtrip=bool(roundtrip),
              teacher_loss=teacher_loss, student_loss=float(m["loss"]),
              sparsity=float(m["sparsity"]))


def correctness(log) -> dict[str, Any]:
  """`correctness_run` on the default device and on the CPU, compared."""
  import jax
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, device in (("default", jax.devices()[0]), ("cpu", jax.devices("cpu")[0])):
      (Path(tmp) / name).mkdir()
      t = time.perf_counter()
      runs[name] = correctness_run(device, Path(tmp) / name)
      runs[name]["seconds"] = time.perf_counter() - t
      log(f"correctness on {device.platform}: {runs[name]['seconds']:.1f} s, student "
          f"sparsity {runs[name]['sparsity']:.3f}")
  return dict(device=jax.devices()[0].device_kind, **compare_runs(runs["default"], runs["cpu"]),
              student_sparsity=runs["default"]["sparsity"],
              losses={k: dict(teacher=r["teacher_loss"], student=r["student_loss"])
                      for k, r in runs.items()},
              seconds={k: r["seconds"] for k, r in runs.items()},
              artifact_roundtrip={k: r["roundtrip"] for k, r in runs.items()})


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
  """Masks of two runs entry by entry, and their params' largest relative difference
  (per leaf: max |a - b| / max |b|)."""
  import jax
  pairs = list(zip(jax.tree.leaves(a["masks"]), jax.tree.leaves(b["masks"]), strict=True))
  different = sum(int(np.sum(x != y)) for x, y in pairs)
  rel = max(float(np.max(np.abs(x - y))) / max(1e-12, float(np.max(np.abs(y))))
            for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]),
                            strict=True))
  return dict(masks_equal=different == 0, mask_entries_different=different,
              mask_entries=sum(x.size for x, _ in pairs), params_max_rel_diff=rel)


# ----------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
  return "" if x is None else f"{100 * x:.1f}%"


def markdown(result: dict[str, Any]) -> str:
  """The JSON as tables a person reads."""
  env = result["environment"]
  lines = [f"# accelerator_check ({'smoke' if result['smoke'] else 'full'})", "",
           f"Device: {env['device_kind']} ({env['platform']}, {env['device_count']} "
           f"device(s)); host CPU {env['host_cpu']}.",
           f"Versions: python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, "
           f"torch {env['torch']}" + (f" (CUDA: {env.get('torch_device')})" if env["cuda"]
                                     else "") + ".",
           f"Started {result['started']}; {result['seconds']:.0f} s in all.", ""]
  if result.get("train"):
    lines += ["## Train step (median s/step over non-event steps; amortised over one mask "
              f"event every {ts.EVENT_PERIOD} steps)", "",
              "| shape | dtype | variant | s/step | event s | ex/s (amortised) | TFLOP/s | "
              "MFU (chip peak) | of measured matmul |", "|---" * 9 + "|"]
    for row in result["train"]:
      for label, st in row["steps"].items():
        ev = f"{st['event_seconds']:.4f}" if st["event_seconds"] else ""
        lines.append(f"| {row['shape']} | {row['dtype']} | {label} | {st['seconds']:.4f} | "
                     f"{ev} | {st['examples_per_s']:.1f} | {st['tflops']:.3g} | "
                     f"{_pct(st['mfu'])} | {_pct(st['of_matmul'])} |")
    lines += ["", "| shape | dtype | pruning overhead, non-event | amortised | jax / torch "
              "examples/s | matmul TFLOP/s measured | chip peak |", "|---" * 7 + "|"]
    for row in result["train"]:
      ratio = row.get("jax_over_torch")
      lines.append(f"| {row['shape']} | {row['dtype']} | {100 * row['prune_overhead']:+.1f}% | "
                   f"{100 * row['prune_overhead_amortized']:+.1f}% | "
                   + (f"{ratio:.2f}x" if ratio else "") + f" | {row['matmul_tflops']:.3g} | "
                   + (f"{row['chip_peak_tflops']:.0f}" if row["chip_peak_tflops"] else "") + " |")
    lines.append("")
  if result.get("infer"):
    lines += ["## Sparse inference from the exported artifact (ms per batch; speed-up over "
              "the same framework's dense path; logits error vs jax-dense float32)", "",
              "| sparsity | batch | backend | ms | speed-up | error (tolerance) |",
              "|---" * 6 + "|"]
    for row in result["infer"]:
      for label, r in row["backends"].items():
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
        ok = "" if r["ok"] else " **over**"
        lines.append(f"| {row['sparsity']} | {row['batch']} | {label} | {r['ms']:.2f} | {sp} | "
                     f"{r['error']:.1e} ({r['tolerance']:.0e}){ok} |")
      for label, err in row["errors"].items():
        lines.append(f"| {row['sparsity']} | {row['batch']} | {label} | failed: "
                     f"{err.splitlines()[0][:120]} | | |")
    lines.append("")
  c = result.get("correctness")
  if c:
    lines += ["## Correctness: the tiny prune run on the device and on the CPU", "",
              f"Masks equal: **{c['masks_equal']}** ({c['mask_entries_different']} of "
              f"{c['mask_entries']} entries differ); parameters' max relative difference "
              f"{c['params_max_rel_diff']:.1e}; student sparsity {c['student_sparsity']:.3f}; "
              f"artifact round trip {c['artifact_roundtrip']}; seconds {c['seconds']}.", ""]
  for section, err in result.get("failed", {}).items():
    lines += [f"## {section}: FAILED", "", "```", err.rstrip(), "```", ""]
  return "\n".join(lines)


def write(out: Path, result: dict[str, Any]) -> None:
  """accelerator_check.json and .md in ``out``, each replaced atomically."""
  for name, text in (("accelerator_check.json", json.dumps(result, indent=1) + "\n"),
                     ("accelerator_check.md", markdown(result))):
    tmp = out / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out", type=Path, help="folder for accelerator_check.json and .md")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes and few steps: the code paths in seconds")
  parser.add_argument("--sections", default=",".join(SECTIONS))
  parser.add_argument("--steps", type=int, default=0,
                      help=f"timed steps per train variant (default {2 * ts.EVENT_PERIOD + 1}"
                      f", smoke {ts.EVENT_PERIOD}: at least one mask event)")
  parser.add_argument("--reps", type=int, default=0, help="timed repetitions per inference "
                      "path (default 10, smoke 2)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch train step")
  args = parser.parse_args(argv)
  sections = args.sections.split(",")
  if unknown := sorted(set(sections) - set(SECTIONS)):
    parser.error(f"unknown sections {unknown}: expected some of {list(SECTIONS)}")
  args.out.mkdir(parents=True, exist_ok=True)
  log = lambda line: print(line, flush=True)
  t0 = time.perf_counter()
  result: dict[str, Any] = dict(smoke=args.smoke, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                                environment=environment(), seconds=0.0, failed={})
  env = result["environment"]
  log(f"device: {env['device_kind']} ({env['platform']}); jax {env['jax']}, torch "
      f"{env['torch']}, CUDA {env['cuda']}")
  if env["cuda"]:
    import torch
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default on the GPU
  torch_device = None if args.no_torch or env["torch"] is None else (
      "cuda" if env["cuda"] else "cpu")
  steps = args.steps or (ts.EVENT_PERIOD if args.smoke else 2 * ts.EVENT_PERIOD + 1)
  jobs: dict[str, Callable[[], Any]] = {
      "train": lambda: train_rows(SMOKE_TRAIN if args.smoke else TRAIN,
                                  SMOKE_DTYPES if args.smoke else DTYPES, steps, torch_device,
                                  log, peak_n=256 if args.smoke else 4096),
      "infer": lambda: infer_rows(SMOKE_INFER_SHAPE if args.smoke else INFER_SHAPE,
                                  SMOKE_SPARSITIES if args.smoke else SPARSITIES,
                                  SMOKE_BATCHES if args.smoke else BATCHES,
                                  SMOKE_SEQ if args.smoke else SEQ,
                                  args.reps or (2 if args.smoke else 10), env["cuda"], log),
      "correctness": lambda: correctness(log),
  }
  for section in sections:
    try:
      job = jobs[section]()
      if isinstance(job, dict):
        result[section] = job
      else:  # rows: written one by one, so that a run cut short keeps what it measured
        result[section] = []
        for row in job:
          result[section].append(row)
          result["seconds"] = time.perf_counter() - t0
          write(args.out, result)
    except Exception:  # noqa: BLE001 -- one broken section must not lose the others
      result["failed"][section] = traceback.format_exc()
      log(f"{section}: FAILED\n{result['failed'][section]}")
    result["seconds"] = time.perf_counter() - t0
    write(args.out, result)
  log(f"wrote {args.out / 'accelerator_check.json'} and .md in {result['seconds']:.0f} s")
  bad = list(result["failed"])
  if result.get("correctness") and not result["correctness"]["masks_equal"]:
    bad.append("correctness: masks differ")
  bad += [f"infer {r['sparsity']} b{r['batch']} {k}: error {v['error']:.1e}"
          for r in result.get("infer", []) for k, v in r["backends"].items() if not v["ok"]]
  for line in bad:
    print(f"accelerator_check: {line}", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
