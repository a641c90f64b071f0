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
# # jaxprune quickstart: pruning any JAX model with optax
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxprune/jaxprune/blob/main/colab/quickstart.ipynb)
#
# Pruning in jaxprune is one optax transformation placed **last** in a chain, after any
# optimizer: `optax.chain(optimizer, jaxprune.prune_by_magnitude(schedule))`. The masks
# live in the optimizer state and every update is rewritten so that pruned weights are
# exactly zero afterwards; there is no second call to remember.
#
# This notebook trains a small Flax MLP on scikit-learn's digits (8x8 images of
# handwritten digits, shipped with the package) four times: dense, pruned to 90% on a
# cubic schedule, 2:4 (N:M) and 4x4 blocks, and plots sparsity and accuracy over steps
# and the weight magnitudes before and after pruning. It runs on a CPU, GPU or TPU
# runtime; on several devices the batches are sharded over them.
#
# **Which runtime**: any (Runtime > Change runtime type). Top to bottom, after the install:
#
# | runtime | time |
# |---|---|
# | CPU (2 cores) | 24 s (measured on a 2-core CPU like Colab's) |
# | GPU (T4, L4, A100) | not measured yet |
# | TPU | not measured yet |

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
STEPS = 600  # @param {type:"integer"}
BATCH = 128  # @param {type:"integer"}
SPARSITY = 0.9  # @param {type:"number"}
LR = 3e-3  # @param {type:"number"}
EVAL_EVERY = 20  # @param {type:"integer"}
# SMOKE: a few steps only (what CI runs). STEPS: training steps of each run. BATCH:
# examples per step (a multiple of the device count). SPARSITY: final sparsity of the
# unstructured run. LR: AdamW's learning rate. EVAL_EVERY: steps between two
# measurements of accuracy and sparsity.

# %%
if SMOKE:
  STEPS, EVAL_EVERY = 40, 10
RAMP = int(0.7 * STEPS)  # sparsity ramps up over the first 70% of the steps

# %% [markdown]
# ## Data, model and a training loop
#
# The loop is plain JAX: one jitted step calling `tx.update`. Nothing in it knows about
# pruning, so the same `train` function trains the dense and the pruned models; only
# the optax transformation `prune` changes. The batch is sharded over a one-axis device
# mesh (`"data"`) and the parameters are replicated, so the same cells use all the
# devices of a TPU runtime.

# %%
import flax.linen as nn
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxprune

digits = load_digits()
x_all = (digits.data / 16.0).astype(np.float32)  # 1,797 images of 8x8 pixels in [0, 1]
y_all = digits.target.astype(np.int32)
order = np.random.default_rng(0).permutation(len(x_all))
train_idx, test_idx = order[:1437], order[1437:]
x_train, y_train = x_all[train_idx], y_all[train_idx]
x_test, y_test = x_all[test_idx], y_all[test_idx]
print(f"train {len(x_train)}, test {len(x_test)} images, {x_all.shape[1]} pixels, 10 classes")

mesh = Mesh(np.array(jax.devices()), ("data",))
batch_sharding = NamedSharding(mesh, P("data"))
replicated = NamedSharding(mesh, P())


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x))
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(10)(x)


model = MLP()
KERNELS = r"kernel$"  # what is pruned: the weight matrices (a regex over param paths)


def accuracy(params):
  logits = model.apply({"params": params}, x_test)
  return float((np.asarray(logits).argmax(-1) == y_test).mean())


def train(prune=None, steps=STEPS, seed=0):
  """AdamW, with `prune` last in the chain when given; returns params and a history."""
  tx = optax.adamw(LR) if prune is None else optax.chain(optax.adamw(LR), prune)
  params = jax.device_put(model.init(jax.random.key(seed), x_train[:1])["params"], replicated)
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  rng, history = np.random.default_rng(seed), []
  for t in range(1, steps + 1):
    idx = rng.choice(len(x_train), BATCH, replace=False)
    x, y = jax.device_put((x_train[idx], y_train[idx]), batch_sharding)
    params, state, loss = step(params, state, x, y)
    if t % EVAL_EVERY == 0 or t == steps:
      history.append({"step": t, "loss": float(loss), "accuracy": accuracy(params),
                      "sparsity": jaxprune.sparsity_report(params, KERNELS).sparsity})
  return params, history


# %% [markdown]
# ## Dense baseline

# %%
dense_params, dense_hist = train()
print(f"dense: test accuracy {dense_hist[-1]['accuracy']:.2%}")

# %% [markdown]
# ## 90% sparse: magnitude pruning on a cubic schedule
#
# `cubic_sparsity(0.9, RAMP)` ramps from 0 to 90% over `RAMP` steps (Zhu & Gupta's cubic
# schedule, as SparseBERT), recomputing the masks from the weights' magnitudes at each
# event; afterwards the remaining 10% of every kernel keep training. `sparsity_report`
# counts the zeros of each kernel (biases are not pruned).

# %%
prune90 = jaxprune.prune_by_magnitude(jaxprune.cubic_sparsity(SPARSITY, RAMP, events=20),
                                      where=KERNELS)
sparse_params, sparse_hist = train(prune90)
print(f"{SPARSITY:.0%} sparse: test accuracy {sparse_hist[-1]['accuracy']:.2%}\n")
print(jaxprune.sparsity_report(sparse_params, where=KERNELS).format())

# %% [markdown]
# ## N:M sparsity (2:4)
#
# `pattern=jaxprune.NM(2, 4)`: at most 2 of every 4 consecutive input weights of each
# output unit are kept, the layout NVIDIA's sparse tensor cores run. The cubic schedule
# ramps 4:4 -> 3:4 -> 2:4 (50% sparsity).

# %%
prune24 = jaxprune.prune_by_magnitude(jaxprune.cubic_sparsity(0.5, RAMP, events=20),
                                      where=KERNELS, pattern=jaxprune.NM(2, 4))
nm_params, nm_hist = train(prune24)
kernel = np.asarray(nm_params["Dense_1"]["kernel"])  # (in, out): groups of 4 inputs
kept_per_group = (kernel.reshape(-1, 4, kernel.shape[1]) != 0).sum(axis=1)
assert kept_per_group.max() <= 2, kept_per_group.max()
print(f"2:4: test accuracy {nm_hist[-1]['accuracy']:.2%}; every group of 4 inputs keeps "
      f"<= {kept_per_group.max()} weights\n")
print(jaxprune.sparsity_report(nm_params, where=KERNELS).format())

# %% [markdown]
# ## Block sparsity (4x4)
#
# `pattern=jaxprune.Blocks(4, 4)` keeps or prunes whole 4x4 tiles, ranked by their L1
# norm. The output layer (256x10) cannot be tiled by 4x4 blocks, so `where` selects the
# two hidden kernels only: a regex over the parameter paths.

# %%
prune_blocks = jaxprune.prune_by_magnitude(jaxprune.cubic_sparsity(0.75, RAMP, events=20),
                                           where=r"Dense_[01]/kernel",
                                           pattern=jaxprune.Blocks(4, 4))
block_params, block_hist = train(prune_blocks)
print(f"4x4 blocks, 75%: test accuracy {block_hist[-1]['accuracy']:.2%}\n")
print(jaxprune.sparsity_report(block_params, where=KERNELS).format())

# %% [markdown]
# ## Plots
#
# Sparsity and test accuracy over training steps, the magnitudes of the second hidden
# kernel's weights dense and after 90% pruning (the survivors are the large ones), and
# which weights of that kernel each pattern keeps.

# %%
import matplotlib.pyplot as plt

runs = {"dense": dense_hist, f"{SPARSITY:.0%} unstructured": sparse_hist, "2:4": nm_hist,
        "4x4 blocks 75%": block_hist}
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for name, hist in runs.items():
  steps = [h["step"] for h in hist]
  axes[0].plot(steps, [h["sparsity"] for h in hist], label=name)
  axes[1].plot(steps, [h["accuracy"] for h in hist], label=name)
axes[0].set(title="sparsity of the kernels", xlabel="step", ylim=(0, 1))
axes[1].set(title="test accuracy", xlabel="step")
dense_w = np.abs(np.asarray(dense_params["Dense_1"]["kernel"])).ravel()
sparse_w = np.abs(np.asarray(sparse_params["Dense_1"]["kernel"])).ravel()
bins = np.linspace(0, max(dense_w.max(), sparse_w.max()), 60)
axes[2].hist(dense_w, bins=bins, alpha=0.6, label="dense")
axes[2].hist(sparse_w[sparse_w > 0], bins=bins, alpha=0.6, label=f"{SPARSITY:.0%} sparse (kept)")
axes[2].set(title="|w| of Dense_1/kernel", xlabel="|w|", yscale="log")
for ax in axes:
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for ax, (name, params) in zip(axes, [(f"{SPARSITY:.0%} unstructured", sparse_params),
                                     ("2:4", nm_params), ("4x4 blocks", block_params)]):
  ax.imshow(np.asarray(params["Dense_1"]["kernel"])[:64, :64] != 0, cmap="Greys",
            interpolation="nearest")
  ax.set(title=f"{name}: kept weights (black)", xlabel="output", ylabel="input")
fig.suptitle("Dense_1/kernel, first 64x64 entries")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where next
#
# * `jaxprune.magnitude_masks(params, 0.9)` and `jaxprune.apply_masks` prune once,
#   outside any training loop.
# * `scope="global"` ranks all kernels together instead of each one separately.
# * [sparsebert_glue.ipynb](https://colab.research.google.com/github/jaxprune/jaxprune/blob/main/colab/sparsebert_glue.ipynb):
#   the paper's method on a pre-trained BERT and a GLUE task.
