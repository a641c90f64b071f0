"""Artifact sizes and sparse inference speed of magnitude-pruned BERTs (CPU; GPU if any).

Run: ``python bench/export_infer.py`` (everything: MiniLM-L6 and BERT-base shapes, 2:4 /
90% / 95%, batch 1/8/32, seq 128; about 25-40 minutes on 2 quiet CPU cores), or a quick
look: ``python bench/export_infer.py --models minilm --sparsities 0.95 --batches 1
--sections size,linear`` (about 1 minute). Random weights magnitude-pruned per matrix
(`masks_lib.magnitude_masks`, 2:4 via ``masks.NM(2, 4)``) are enough for sizes and speed.
Prints tables and ratios, asserts nothing.

Sections (``--sections``):

1. ``size``: bytes of the dense HF export against the sparse artifact for each encoding
   (``auto`` = smallest per matrix, ``bitmask``, ``csr``, ``csr256``) with fp32 and
   fp16 values, and load times (``load_sparse``: CRC check + decode; the dense file
   through ``safetensors.numpy.load_file``).
2. ``linear``: the encoder linear layers only (the 6 matmuls of every layer, on
   ``batch * seq`` tokens): dense vs sparse, per framework.
3. ``model``: the whole classifier forward through each `jaxprune.infer` backend:
   latency (ms per batch) and throughput (sequences/s).

Every timing within one table row is measured side by side, interleaved repetition by
repetition, so machine load hits all paths alike; read the ratios, not the absolute ms.
torch runs with 2 threads (``--torch-threads``). On a CUDA machine the torch paths
also run on the GPU in fp16, with ``torch-2:4`` (``to_sparse_semi_structured``).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# Run from a checkout without relying on how (or whether) jaxprune is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# On a shared machine, OpenMP threads that spin-wait at barriers make torch 5-15x slower
# (measured here: 64 ms passive vs 957 ms active, 2 threads, load ~5). Set before torch
# loads; export OMP_WAIT_POLICY=ACTIVE to override on a quiet machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp
import numpy as np

from jaxprune import export
from jaxprune import infer
from jaxprune import masks as masks_lib
from jaxprune.models import bert
from jaxprune.models import convert

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}
ENCODINGS = ("auto", "bitmask", "csr", "csr256")


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="minilm,base", help="comma list of " + ",".join(SHAPES))
  p.add_argument("--sparsities", default="2:4,0.9,0.95", help="comma list: 2:4 or floats")
  p.add_argument("--batches", default="1,8,32")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--sections", default="size,linear,model")
  p.add_argument("--reps", type=int, default=5, help="timed repetitions per path")
  p.add_argument("--bcoo-max-batch", type=int, default=1,
                 help="jax-bcoo is orders of magnitude slower on CPU: only up to this batch")
  p.add_argument("--bcoo-max-mib", type=float, default=256,
                 help="skip jax-bcoo when its CPU product buffer (nnz x tokens x 4 B, for "
                      "the largest matrix) exceeds this; BERT-base 2:4 would need ~600 MiB "
                      "per matmul and ran out of memory")
  p.add_argument("--csr-mm-max-batch", type=int, default=1,
                 help="also time torch.sparse.mm(W_csr, x^T) (torch-csr is F.linear) up to this")
  p.add_argument("--torch-threads", type=int, default=2)
  return p.parse_args()


# ----------------------------------------------------------------------------- setup


def pruned_params(shape: str | dict, sparsity: str, seed: int = 0):
  """Random BERT params of a shape (a name in SHAPES, or BertConfig fields),
  magnitude-pruned (2:4 or a fraction): (params, masks, config)."""
  config = bert.BertConfig(**(SHAPES[shape] if isinstance(shape, str) else shape),
                           num_labels=2)
  params = bert.init_params(bert.BertForSequenceClassification(config), jax.random.key(seed))
  if sparsity == "2:4":
    masks = masks_lib.magnitude_masks(params, None, masks_lib.BERT_ENCODER_MATRICES,
                                     pattern=masks_lib.NM(2, 4))
  else:
    masks = masks_lib.magnitude_masks(params, float(sparsity), masks_lib.BERT_ENCODER_MATRICES)
  return masks_lib.apply_masks(params, masks), masks, config


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
  """Median seconds per call of each fn, timed round-robin after one warm-up each."""
  for fn in fns.values():
    fn()
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {k: statistics.median(v) for k, v in times.items()}


def fmt_row(cells, widths) -> str:
  return "  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths)))


# ------------------------------------------------------------------------------ size


def _encoder_only(tree):
  """The encoder-matrix leaves of a params/mask tree, as a flat {path: leaf} tree."""
  flags = masks_lib.prunable_tree(tree, masks_lib.BERT_ENCODER_MATRICES)
  return {masks_lib.path_str(p).replace("/", "."): leaf
          for (p, leaf), f in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                                  jax.tree.leaves(flags)) if f}


def size_section(shape, sp, params, masks, config, reps: int) -> None:
  """Whole-artifact bytes; encoder-matrix bytes and load time per encoding."""
  from safetensors.numpy import load_file, save_file
  mb = lambda n: f"{n / 2**20:,.2f}"
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    hf = convert.export_hf(params, config, tmp / "hf") / "model.safetensors"
    rows = [("dense HF export (fp32)", hf.stat().st_size)]
    for vdt, ddt in (("float32", None), ("float16", None), ("float16", "float16")):
      r = export.export_sparse(params, masks, tmp / "a.safetensors", vdt, config=config,
                               dense_dtype=ddt)
      rows.append((f"sparse auto, values {vdt}, other tensors {ddt or 'float32'}",
                   r.file_bytes))
    print("-- whole artifact (MiB; embeddings dominate small models) --")
    print("   " + " | ".join(f"{name}: {mb(n)}" for name, n in rows))

    print("-- encoder matrices only: stored MiB, % of dense fp32, % of dense in the value "
          "dtype, load ms (load_sparse: CRC + decode; dense: safetensors load_file) --")
    enc_params, enc_masks = _encoder_only(params), _encoder_only(masks)
    dense_file = tmp / "dense.safetensors"
    save_file({k: np.asarray(v) for k, v in enc_params.items()}, str(dense_file))
    files, reports = {}, {}
    for vdt in ("float32", "float16"):
      for enc in ENCODINGS:
        files[vdt, enc] = tmp / f"{vdt}-{enc}.safetensors"
        reports[vdt, enc] = export.export_sparse(enc_params, enc_masks, files[vdt, enc], vdt,
                                                 encoding=enc)
    loads = {"dense": functools.partial(load_file, str(dense_file))}
    loads.update({k: functools.partial(export.load_sparse, f) for k, f in files.items()})
    times = interleaved(loads, reps)
    widths = (14, 8, 16, 10, 7, 7, 8)
    print(fmt_row(("model/sp", "values", "encoding", "MiB", "%fp32", "%vdt", "load ms"),
                  widths))
    print(fmt_row((f"{shape}/{sp}", "fp32", "dense", mb(dense_file.stat().st_size), "100%",
                   "100%", f"{times['dense'] * 1e3:.0f}"), widths))
    for (vdt, enc), r in reports.items():
      used = "/".join(sorted({m.encoding for m in r.matrices}))
      print(fmt_row((f"{shape}/{sp}", {"float32": "fp32", "float16": "fp16"}[vdt],
                     f"auto={used}" if enc == "auto" else enc, mb(r.stored_matrix_bytes),
                     f"{r.ratio:.1%}", f"{r.value_dtype_ratio:.1%}",
                     f"{times[vdt, enc] * 1e3:.0f}"), widths))


# ---------------------------------------------------------------------------- linear


def encoder_kernels(params):
  """[(name, kernel (in, out), bias)] of the 6 matrices of every layer."""
  flags = masks_lib.prunable_tree(params, masks_lib.BERT_ENCODER_MATRICES)
  out = []
  for (path, leaf), flag in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree.leaves(flags)):
    if flag:
      name = masks_lib.path_str(path)
      bias = params
      for key in name.split("/")[:-1]:
        bias = bias[key]
      out.append((name, np.asarray(leaf), np.asarray(bias["bias"])))
  return out


def linear_fns(params, config, tokens: int, bcoo: bool, csr_mm: bool, cuda: bool):
  """Callables computing all encoder linears once per path (on fixed random inputs)."""
  import torch
  kernels = encoder_kernels(params)
  rng = np.random.default_rng(0)
  xs = {d: rng.standard_normal((tokens, d)).astype(np.float32)
        for d in (config.hidden_size, config.intermediate_size)}
  fns = {}

  jx = {d: jnp.asarray(x) for d, x in xs.items()}
  dense = [(jnp.asarray(k), jnp.asarray(b)) for _, k, b in kernels]
  f_dense = jax.jit(lambda ws, xs: [xs[k.shape[0]] @ k + b for k, b in ws])
  fns["jax-dense"] = lambda: jax.block_until_ready(f_dense(dense, jx))
  for fmt in ("bcsr",) + (("bcoo",) if bcoo else ()):
    sp = infer.sparsify({str(i): k for i, (_, k, _) in enumerate(kernels)}, fmt, where=None)
    ws = [(sp[str(i)], jnp.asarray(b)) for i, (_, _, b) in enumerate(kernels)]
    f_sp = jax.jit(lambda ws, xs: [infer.sparse_matmul(xs[w.shape[1]], w) + b for w, b in ws])
    fns[f"jax-{fmt}"] = functools.partial(lambda f, ws: jax.block_until_ready(f(ws, jx)),
                                          f_sp, ws)

  def torch_linears(device, dtype):
    mods = []
    for _, k, b in kernels:
      lin = torch.nn.Linear(*k.shape)
      lin.weight.data = torch.from_numpy(np.ascontiguousarray(k.T))
      lin.bias.data = torch.from_numpy(b)
      mods.append(lin.to(device=device, dtype=dtype).eval())
    return mods

  def run_torch(mods, tx, sync):
    with torch.no_grad():
      for m in mods:
        m(tx[m.in_features])
    sync()

  no_sync = lambda: None
  tx = {d: torch.from_numpy(x)[None] for d, x in xs.items()}
  lin = torch_linears("cpu", torch.float32)
  fns["torch-dense"] = functools.partial(run_torch, lin, tx, no_sync)
  fns["torch-csr"] = functools.partial(run_torch, [infer.sparse_linear(m) for m in lin],
                                       tx, no_sync)
  if csr_mm:
    fns["torch-csr-mm"] = functools.partial(
        run_torch, [infer.sparse_linear(m, "mm") for m in lin], tx, no_sync)
  if cuda:
    from torch.sparse import to_sparse_semi_structured
    sync = torch.cuda.synchronize
    gx = {d: x.to("cuda", torch.float16) for d, x in tx.items()}
    glin = torch_linears("cuda", torch.float16)
    fns["cuda-dense-fp16"] = functools.partial(run_torch, glin, gx, sync)
    fns["cuda-csr-fp16"] = functools.partial(
        run_torch, [infer.sparse_linear(m) for m in glin], gx, sync)
    if all(export.semi_structured_shape_ok(m.weight.shape) for m in glin):
      try:
        for m in glin:
          export.check_nm(m.weight, "w")
        semi = torch_linears("cuda", torch.float16)
        for m in semi:
          m.weight = torch.nn.Parameter(to_sparse_semi_structured(m.weight.detach()),
                                        requires_grad=False)
        fns["cuda-2:4-fp16"] = functools.partial(run_torch, semi, gx, sync)
      except export.PatternError:
        pass  # not a 2:4 model
  return fns


def ratio_cols(times: dict[str, float]) -> str:
  """``name ms (xN over its framework's dense)`` cells and the best CPU sparse/dense ratio."""
  dense = {"jax": "jax-dense", "torch": "torch-dense", "cuda": "cuda-dense-fp16"}
  cells = []
  for name, t in times.items():
    ref = times.get(dense[name.split("-")[0]])
    speedup = "" if "dense" in name or ref is None else f" x{ref / t:.2f}"
    cells.append(f"{name} {t * 1e3:.1f}ms{speedup}")
  best_dense = min(t for n, t in times.items() if n in ("jax-dense", "torch-dense"))
  best_sparse = min(t for n, t in times.items() if "dense" not in n and n[:4] != "cuda")
  return " | ".join(cells) + f" || best CPU sparse / best CPU dense: x{best_dense / best_sparse:.2f}"


def bcoo_ok(args, params, batch: int) -> bool:
  """Whether jax-bcoo fits: on CPU it materialises a (nnz, tokens) product per matrix."""
  nnz = max(int(np.count_nonzero(k)) for _, k, _ in encoder_kernels(params))
  return (batch <= args.bcoo_max_batch
          and nnz * batch * args.seq * 4 <= args.bcoo_max_mib * 2**20)


def linear_section(args, shape, sp, params, config, cuda: bool) -> None:
  """The encoder linears alone, every path side by side, per batch size."""
  print("-- encoder linear layers only (6 matmuls x layers, bias included; ms per pass, "
        "xN = speed-up over the same framework's dense) --")
  for batch in args.batches:
    tokens = batch * args.seq
    fns = linear_fns(params, config, tokens, bcoo_ok(args, params, batch),
                     batch <= args.csr_mm_max_batch, cuda)
    times = interleaved(fns, args.reps)
    print(f"{shape}/{sp}/b{batch}: {ratio_cols(times)}", flush=True)


# ----------------------------------------------------------------------------- model


def model_section(args, shape, sp, params, config, cuda: bool) -> None:
  """The whole classifier through each backend, per batch size."""
  print(f"-- whole classifier forward (seq {args.seq}): ms per batch, sequences/s --")
  backends = ["jax-dense", "jax-bcsr", "torch-dense", "torch-csr"]
  if any(bcoo_ok(args, params, b) for b in args.batches):
    backends.insert(2, "jax-bcoo")
  runners = {b: infer.make_runner((params, config), b) for b in backends}
  if cuda:
    runners["cuda-dense-fp16"] = infer.make_runner((params, config), "torch-dense",
                                                   dtype="float16")
    if sp == "2:4":
      runners["cuda-2:4-fp16"] = infer.make_runner((params, config), "torch-2:4")
  for batch in args.batches:
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, config.vocab_size, (batch, args.seq))
    mask, types = np.ones_like(ids), np.zeros_like(ids)
    fns = {b: functools.partial(r, ids, mask, types) for b, r in runners.items()
           if b != "jax-bcoo" or bcoo_ok(args, params, batch)}
    times = interleaved(fns, args.reps)
    tput = " ".join(f"{b}={batch / t:.1f}/s" for b, t in times.items())
    print(f"{shape}/{sp}/b{batch}: {ratio_cols(times)}\n    throughput: {tput}",
          flush=True)


def main() -> None:
  args = parse_args()
  args.models = args.models.split(",")
  args.sparsities = args.sparsities.split(",")
  args.batches = [int(b) for b in args.batches.split(",")]
  sections = args.sections.split(",")
  import torch
  torch.set_num_threads(args.torch_threads)
  cuda = torch.cuda.is_available()
  from train_step import cpu_model  # bench/train_step.py
  print(f"device: {cpu_model()}, "
        f"torch {torch.__version__} ({args.torch_threads} threads, OMP_WAIT_POLICY="
        f"{os.environ['OMP_WAIT_POLICY']}), jax {jax.__version__} "
        f"on {jax.devices()[0].platform}"
        + (f", CUDA: {torch.cuda.get_device_name()}" if cuda else ", no CUDA GPU")
        + f"; load average {os.getloadavg()[0]:.1f}")

  for shape in args.models:
    for sp in args.sparsities:
      params, masks, config = pruned_params(shape, sp)
      print(f"\n== {shape} ({config.num_hidden_layers}L/{config.hidden_size}H), encoder "
            f"matrices pruned {sp} ==", flush=True)
      if "size" in sections:
        size_section(shape, sp, params, masks, config, args.reps)
      if "linear" in sections:
        linear_section(args, shape, sp, params, config, cuda)
      if "model" in sections:
        model_section(args, shape, sp, params, config, cuda)
  print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
