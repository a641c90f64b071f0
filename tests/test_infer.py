"""Inference paths: every backend gives the dense model's logits; 2:4 checks on the host."""

import functools
import re
import textwrap

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
import numpy as np
import pytest

from jaxprune import export
from jaxprune import infer
from jaxprune import masks as masks_lib
from jaxprune.models import bert

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(CUDA, reason="checks the error raised without a CUDA GPU")


def rel_err(got, ref) -> float:
  return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def _inputs(config, batch=3, length=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, config.vocab_size, (batch, length))
  mask = np.ones_like(ids)
  mask[1, length // 2:] = 0  # a padded sequence
  types = np.zeros_like(ids)
  types[:, length // 2:] = 1
  return ids, mask, types


@functools.cache
def _tiny(pattern):
  """A tiny classifier (ReLU head, 64 wide), pruned: (params, masks, config)."""
  config = bert.BertConfig.tiny(hidden_size=64, intermediate_size=128, classifier_relu=True)
  params = bert.init_params(bert.BertForSequenceClassification(config), jax.random.key(1))
  if pattern == "2:4":
    masks = masks_lib.magnitude_masks(params, None, masks_lib.BERT_ENCODER_MATRICES,
                                      pattern=masks_lib.NM(2, 4))
  else:
    masks = masks_lib.magnitude_masks(params, pattern, masks_lib.BERT_ENCODER_MATRICES)
  return masks_lib.apply_masks(params, masks), masks, config


def _dense_logits(params, config, inputs, dtype="float32"):
  model = bert.BertForSequenceClassification(config.replace(dtype=dtype))
  return np.asarray(model.apply({"params": params}, *inputs).logits)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
  params, masks, config = _tiny(0.9)
  root = tmp_path_factory.mktemp("artifacts")
  return {fmt: export.export_model(params, masks, config, root / fmt, format=fmt)
          for fmt in ("hf", "sparse")}


@pytest.mark.parametrize("fmt", ["sparse", "hf"])
@pytest.mark.parametrize("backend", ["jax-dense", "jax-bcsr", "jax-bcoo", "torch-dense",
                                     "torch-csr"])
def test_cpu_backends_match_dense_model(artifacts, fmt, backend):
  params, _, config = _tiny(0.9)
  inputs = _inputs(config)
  ref = _dense_logits(params, config, inputs)
  got = infer.make_runner(artifacts[fmt], backend)(*inputs)
  assert got.shape == (3, 2) and got.dtype == np.float32
  err = rel_err(got, ref)
  print(f"{fmt} {backend}: relative error {err:.2e}")
  assert err < 1e-5


def test_relu_head_matters(artifacts):
  # Guards the test above: without the ReLU head the torch logits would differ.
  params, _, config = _tiny(0.9)
  inputs = _inputs(config)
  plain = _dense_logits(params, config.replace(classifier_relu=False), inputs)
  assert rel_err(plain, _dense_logits(params, config, inputs)) > 1e-3
  assert isinstance(infer.load_torch(artifacts["hf"]).classifier, torch.nn.Sequential)


@pytest.mark.filterwarnings("ignore:bcsr_dot_general cpu lowering not available")
@pytest.mark.parametrize("backend", ["jax-bcsr", "jax-bcoo"])
def test_jax_sparse_fp16(backend):
  params, _, config = _tiny(0.9)
  inputs = _inputs(config)
  ref = _dense_logits(params, config, inputs, dtype="float16")
  got = infer.make_runner((params, config), backend, dtype="float16")(*inputs)
  assert rel_err(got, ref) < 1e-3


def test_sparsify_keeps_exactly_the_nonzeros():
  params, masks, _ = _tiny(0.9)
  sp = infer.sparsify(params)
  layer = sp["bert"]["encoder"]["layer"]["1"]
  w = layer["intermediate"]["dense"]["kernel"]
  assert isinstance(w, jsparse.BCSR) and w.shape == (128, 64)  # (out, in)
  kernel = params["bert"]["encoder"]["layer"]["1"]["intermediate"]["dense"]["kernel"]
  assert w.nse == int(np.count_nonzero(kernel))
  np.testing.assert_array_equal(np.asarray(w.todense()), np.asarray(kernel).T)
  assert not isinstance(sp["bert"]["pooler"]["dense"]["kernel"], jsparse.JAXSparse)
  assert isinstance(infer.sparsify(params, "bcoo")["bert"]["encoder"]["layer"]["0"]
                    ["output"]["dense"]["kernel"], jsparse.BCOO)
  with pytest.raises(ValueError, match="sparse format 'csc'"):
    infer.sparsify(params, "csc")
  del masks


def test_apply_sparse_is_jittable_and_returns_everything():
  params, _, config = _tiny(0.9)
  model = bert.BertForSequenceClassification(config)
  inputs = _inputs(config)
  fn = jax.jit(lambda p, *a: infer.apply_sparse(model, p, *a, output_hidden_states=True))
  out = fn(infer.sparsify(params), *map(jnp.asarray, inputs))
  ref = model.apply({"params": params}, *inputs, output_hidden_states=True)
  assert len(out.hidden_states) == config.num_hidden_layers + 1
  for a, b in zip(out.hidden_states, ref.hidden_states):
    assert rel_err(a, np.asarray(b)) < 1e-5


def test_torch_csr_replaces_exactly_the_encoder_linears(artifacts):
  params, _, config = _tiny(0.9)
  tmodel = infer.torch_sparse_csr(infer.load_torch(artifacts["sparse"]))
  sparse = [n for n, m in tmodel.named_modules() if m.__class__.__name__ == "_SparseLinear"]
  assert len(sparse) == 6 * config.num_hidden_layers
  assert "bert.encoder.layer.0.attention.self.query" in sparse
  assert isinstance(tmodel.bert.pooler.dense, torch.nn.Linear)
  q = tmodel.bert.encoder.layer[0].attention.self.query
  kernel = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
  assert q.weight.layout == torch.sparse_csr
  assert q.weight.values().numel() == int(np.count_nonzero(kernel))


def test_torch_csr_methods_agree(artifacts):
  params, _, config = _tiny(0.9)
  inputs = _inputs(config)
  ref = _dense_logits(params, config, inputs)
  for method in ("mm", "linear"):
    got = infer.make_runner(artifacts["hf"], "torch-csr", csr_method=method)(*inputs)
    assert rel_err(got, ref) < 1e-5
  with pytest.raises(ValueError, match="method 'dense'"):
    infer.sparse_linear(torch.nn.Linear(4, 4), "dense")


def test_load_from_both_artifacts_gives_the_same_params(artifacts):
  _, p_sparse, c_sparse = infer.load(artifacts["sparse"])
  _, p_hf, c_hf = infer.load(artifacts["hf"])
  assert c_sparse == c_hf
  for a, b in zip(jax.tree.leaves(p_sparse), jax.tree.leaves(p_hf)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _sparse_names(tmodel):
  return {n for n, m in tmodel.named_modules() if m.__class__.__name__ == "_SparseLinear"}


def test_torch_where_takes_what_masks_take(artifacts):
  # where is resolved on the Flax params (masks.prunable_tree): regexes, None, a callable,
  # a bool tree. The ReLU head's classifier.1 is the Flax classifier/kernel.
  params, _, config = _tiny(0.9)
  layers = range(config.num_hidden_layers)
  ffn_in = {f"bert.encoder.layer.{i}.intermediate.dense" for i in layers}
  linears = {n for n, m in infer.load_torch(artifacts["hf"]).named_modules()
             if isinstance(m, torch.nn.Linear)}
  cases = [
      (r"intermediate/dense/kernel$", ffn_in),
      (None, linears),
      (lambda p: masks_lib.select(p, r"intermediate/dense/kernel$"), ffn_in),
      (masks_lib.select(params, r"^classifier/kernel$"), {"classifier.1"}),
  ]
  for where, expected in cases:
    tmodel = infer.torch_sparse_csr(infer.load_torch(artifacts["hf"]), where=where)
    assert _sparse_names(tmodel) == expected, where
  assert len(linears) == 6 * config.num_hidden_layers + 2  # + pooler and classifier
  with pytest.raises(export.PatternError, match="no encoder linear selected"):
    infer.torch_semi_structured(infer.load_torch(artifacts["hf"]), where=r"^nothing$")


def _example(obj) -> str:
  """The code of the ``Example::`` block in ``obj``'s docstring."""
  return textwrap.dedent(re.search(r"Example[^\n]*::\n\n(.*?)(?:\n\n|$)", obj.__doc__,
                                   re.S).group(1))


def test_docstring_examples_run(artifacts, tmp_path, monkeypatch):
  # The Example:: blocks read "out" (a sparse artifact) and "hf" (an HF export).
  (tmp_path / "out").symlink_to(artifacts["sparse"])
  (tmp_path / "hf").symlink_to(artifacts["hf"])
  monkeypatch.chdir(tmp_path)
  params, _, config = _tiny(0.9)
  ids, mask, types = _inputs(config)
  ns = {**vars(infer), "ids": ids, "mask": mask, "types": types, "input_ids": ids,
        "attention_mask": mask, "token_type_ids": types}
  ref = _dense_logits(params, config, (ids, mask, types))
  for obj in (infer, infer.make_runner):
    exec(_example(obj), ns)  # pylint: disable=exec-used
    assert rel_err(ns["logits"], ref) < 1e-5, obj
  for obj in (infer.load, infer.sparsify, infer.apply_sparse, infer.torch_sparse_csr):
    exec(_example(obj), ns)  # pylint: disable=exec-used
  no_mask = _dense_logits(params, config, (ids, np.ones_like(ids), np.zeros_like(ids)))
  assert rel_err(ns["logits"], no_mask) < 1e-5
  assert rel_err(ns["out"].logits, no_mask) < 1e-5
  assert len(_sparse_names(ns["tmodel"])) == 6 * config.num_hidden_layers


def test_runner_argument_errors(artifacts):
  with pytest.raises(ValueError, match="backend 'onnx'"):
    infer.make_runner(artifacts["hf"], "onnx")
  with pytest.raises(ValueError, match="dtype 'int8'"):
    infer.make_runner(artifacts["hf"], "jax-dense", dtype="int8")
  if not CUDA:
    with pytest.raises(ValueError, match="torch-csr in float16 needs CUDA"):
      infer.make_runner(artifacts["hf"], "torch-csr", dtype="float16")


# ------------------------------------------------------------------------------ 2:4


@pytest.fixture(scope="module")
def semi_dir(tmp_path_factory):
  params, masks, config = _tiny("2:4")
  return export.export_model(params, masks, config,
                             tmp_path_factory.mktemp("semi") / "m", format="2:4")


def test_semi_structured_rejects_non_2_4_on_the_host(artifacts):
  # Unstructured 90%: fails on the host, naming the matrix, before any CUDA call.
  tmodel = infer.load_torch(artifacts["hf"])
  with pytest.raises(export.PatternError,
                     match=r"bert\.encoder\.layer\.0\.attention\.self\.query\.weight: inputs "
                           r"\d+-\d+ of output row \d+ hold [34] nonzeros; 2:4 allows at most 2"):
    infer.torch_semi_structured(tmodel)
  assert next(tmodel.parameters()).device.type == "cpu"  # untouched


def test_semi_structured_rejects_one_bad_group(semi_dir):
  tmodel = infer.load_torch(semi_dir)
  w = tmodel.bert.encoder.layer[1].output.dense.weight
  with torch.no_grad():
    w[5, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
  with pytest.raises(export.PatternError,
                     match=r"layer\.1\.output\.dense\.weight: inputs 8-11 of output row 5 hold "
                           "3 nonzeros"):
    infer.torch_semi_structured(tmodel)


def test_semi_structured_rejects_unsupported_shapes():
  config = bert.BertConfig.tiny(hidden_size=32, intermediate_size=64)
  params = bert.init_params(bert.BertForSequenceClassification(config), jax.random.key(0))
  flags = masks_lib.select(params, masks_lib.BERT_ENCODER_MATRICES)
  # 2:4 by construction: inputs 2 and 3 of every group of 4 are zero.
  keep = lambda p: (np.arange(p.shape[0]) % 4 < 2)[:, None]
  params = jax.tree.map(lambda p, f: np.where(keep(p), p, 0) if f else p, params, flags)
  tmodel = infer.to_torch(params, config)
  with pytest.raises(export.PatternError, match=r"shape \[32, 32\]; torch 2:4 kernels need"):
    infer.torch_semi_structured(tmodel)


@no_cuda
def test_semi_structured_needs_cuda(semi_dir):
  with pytest.raises(RuntimeError, match="2:4 path needs a CUDA GPU"):
    infer.make_runner(semi_dir, "torch-2:4")


def test_semi_structured_export_runs_densely_on_cpu(semi_dir):
  params, _, config = _tiny("2:4")
  inputs = _inputs(config)
  # The 2:4 export is float16: compare with the dense model on fp16-rounded weights.
  p16 = jax.tree.map(lambda p: p.astype(jnp.float16).astype(jnp.float32), params)
  ref = _dense_logits(p16, config, inputs)
  for backend in ("torch-dense", "torch-csr", "jax-bcsr"):
    assert rel_err(infer.make_runner(semi_dir, backend)(*inputs), ref) < 1e-5


@needs_cuda
def test_semi_structured_matches_dense_fp16_on_cuda(semi_dir):
  params, _, config = _tiny("2:4")
  inputs = _inputs(config, batch=16, length=32)
  dense = infer.make_runner(semi_dir, "torch-dense", dtype="float16")(*inputs)
  got = infer.make_runner(semi_dir, "torch-2:4")(*inputs)
  assert rel_err(got, dense) < 1e-3


@needs_cuda
def test_semi_structured_docstring_example(semi_dir, tmp_path, monkeypatch):
  (tmp_path / "out-2to4").symlink_to(semi_dir)
  monkeypatch.chdir(tmp_path)
  ns = dict(vars(infer))
  exec(_example(infer.torch_semi_structured), ns)  # pylint: disable=exec-used
  assert ns["tmodel"].bert.encoder.layer[0].output.dense.weight.is_cuda


@needs_cuda
def test_torch_csr_fp16_on_cuda(semi_dir):
  params, _, config = _tiny("2:4")
  inputs = _inputs(config)
  dense = infer.make_runner(semi_dir, "torch-dense", dtype="float16")(*inputs)
  got = infer.make_runner(semi_dir, "torch-csr", dtype="float16")(*inputs)
  assert rel_err(got, dense) < 1e-3
  del params


# --------------------------------------------------------------------------- MiniLM


@pytest.mark.slow
def test_minilm_90_sparse_paths_match_dense(minilm_dir, tmp_path):
  from jaxprune.models import from_pretrained
  _, params, config = from_pretrained(minilm_dir, num_labels=2)
  flags = masks_lib.select(params, masks_lib.BERT_ENCODER_MATRICES)

  def prune(p, f):  # per-matrix top-10% magnitudes, in numpy (fast)
    p = np.asarray(p)
    if not f:
      return p
    thr = np.quantile(np.abs(p), 0.9)
    return np.where(np.abs(p) > thr, p, 0).astype(p.dtype)

  params = jax.tree.map(prune, params, flags)
  path = export.export_model(params, None, config, tmp_path / "m", format="sparse")
  inputs = _inputs(config, batch=2, length=24)
  ref = _dense_logits(params, config, inputs)
  for backend in ("jax-bcsr", "torch-csr"):
    err = rel_err(infer.make_runner(path, backend)(*inputs), ref)
    print(f"MiniLM-L6 90% {backend}: relative error {err:.2e}")
    assert err < 1e-5


def test_docs_csr_snippet(artifacts):
  from pathlib import Path
  text = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()
  code = text.split("<!-- csr-snippet -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
  params, _, config = _tiny(0.9)
  inputs = _inputs(config)
  model = infer.load_torch(artifacts["hf"])
  exec(code, {"torch": torch, "model": model})  # pylint: disable=exec-used
  assert model.bert.encoder.layer[1].output.dense.weight.layout == torch.sparse_csr
  with torch.no_grad():
    got = model(**{k: torch.as_tensor(v) for k, v in
                   zip(("input_ids", "attention_mask", "token_type_ids"), inputs)}).logits
  assert rel_err(got.numpy(), _dense_logits(params, config, inputs)) < 1e-5
