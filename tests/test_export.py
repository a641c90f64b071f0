"""Artifacts: exact round trips, headers, size report, formats and one-line errors."""

import json
import re
import shutil
import textwrap

from hypothesis import given, settings, strategies as st
import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxprune import export
from jaxprune import masks as masks_lib
from jaxprune.models import bert

ENCODINGS = ("auto", "bitmask", "csr", "csr256")


def _config(**changes):
  # 64/128 wide so that every encoder matrix fits torch's 2:4 shape rule.
  return bert.BertConfig.tiny(**{"hidden_size": 64, "intermediate_size": 128, **changes})


@pytest.fixture(scope="module")
def tiny():
  config = _config()
  params = bert.init_params(bert.BertForSequenceClassification(config), jax.random.key(0))
  return jax.tree.map(np.asarray, params), config


_MASKS = {}


def _masks(params, pattern):
  """jaxprune's magnitude masks of the encoder matrices (memoised: they take seconds)."""
  key = (tuple(np.shape(x) for x in jax.tree.leaves(params)),
         float(jax.tree.leaves(params)[0].ravel()[0]), pattern)
  if key not in _MASKS:
    if pattern == "2:4":
      masks = masks_lib.magnitude_masks(params, None, masks_lib.BERT_ENCODER_MATRICES,
                                        pattern=masks_lib.NM(2, 4))
    else:
      masks = masks_lib.magnitude_masks(params, pattern, masks_lib.BERT_ENCODER_MATRICES)
    _MASKS[key] = jax.tree.map(np.asarray, masks)
  return _MASKS[key]


def topk_masks(params, sparsity):
  """Per-matrix magnitude masks in numpy (fast on the 36 MiniLM matrices)."""
  flags = masks_lib.select(params, masks_lib.BERT_ENCODER_MATRICES)

  def mask(p, f):
    p = np.asarray(p)
    if not f:
      return np.ones(p.shape, bool)
    k = p.size - int(round(p.size * (1 - sparsity)))
    return np.abs(p) > np.partition(np.abs(p).ravel(), k - 1)[k - 1]

  return jax.tree.map(mask, params, flags)


def _assert_bitwise(a_tree, b_tree):
  assert jax.tree.structure(a_tree) == jax.tree.structure(b_tree)
  for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def _example(obj) -> str:
  """The code of the ``Example::`` block in ``obj``'s docstring."""
  return textwrap.dedent(re.search(r"Example[^\n]*::\n\n(.*?)(?:\n\n|$)", obj.__doc__,
                                   re.S).group(1))


def _rewrite(path, header_fn=None, tensors_fn=None):
  """Re-saves an artifact with its header and/or tensors changed."""
  from safetensors import safe_open
  with safe_open(str(path), "np") as f:
    meta = f.metadata()
  tensors = load_file(str(path))
  if tensors_fn:
    tensors = tensors_fn(tensors)
  if header_fn:
    meta = {"jaxprune": json.dumps(header_fn(json.loads(meta["jaxprune"])))}
  save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("pattern", [0.9, 0.95, "2:4"])
def test_round_trip_is_bitwise(tiny, tmp_path, encoding, pattern):
  params, config = tiny
  masks = _masks(params, pattern)
  # Kept weights that are exactly +0.0 / -0.0 must survive too.
  q = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"].copy()
  mq = np.asarray(masks["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"])
  kept = np.argwhere(mq)
  q[tuple(kept[0])], q[tuple(kept[1])] = 0.0, -0.0
  params = jax.tree.map(lambda x: x, params)
  params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"] = q

  path = tmp_path / "m.safetensors"
  report = export.export_sparse(params, masks, path, config=config, encoding=encoding)
  loaded = export.load_sparse(path)
  _assert_bitwise(jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks)), loaded)
  assert np.signbit(loaded["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]
                    ["kernel"][tuple(kept[1])])
  assert len(report.matrices) == 6 * config.num_hidden_layers
  if encoding != "auto":
    assert {m.encoding for m in report.matrices} == {encoding}


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_16_bit_values_widen_exactly(tiny, tmp_path, value_dtype):
  params, config = tiny
  masks = _masks(params, 0.9)
  path = tmp_path / "m.safetensors"
  export.export_sparse(params, masks, path, value_dtype, config=config)
  loaded = export.load_sparse(path)
  low = ml_dtypes.bfloat16 if value_dtype == "bfloat16" else np.float16
  expected = masks_lib.apply_masks(params, masks)
  flags = masks_lib.select(params, masks_lib.BERT_ENCODER_MATRICES)
  for e, got, f in zip(jax.tree.leaves(expected), jax.tree.leaves(loaded),
                       jax.tree.leaves(flags)):
    assert got.dtype == np.float32
    want = np.asarray(e).astype(low).astype(np.float32) if f else np.asarray(e)
    np.testing.assert_array_equal(got, want)


def test_dense_dtype_casts_the_other_tensors(tiny, tmp_path):
  params, config = tiny
  path = tmp_path / "m.safetensors"
  full = export.export_sparse(params, _masks(params, 0.9), path)
  half = export.export_sparse(params, _masks(params, 0.9), path, dense_dtype="float16")
  assert half.other_bytes * 2 == full.other_bytes
  emb = export.load_sparse(path)["bert"]["embeddings"]["word_embeddings"]["embedding"]
  ref = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert emb.dtype == np.float32
  np.testing.assert_array_equal(emb, ref.astype(np.float16).astype(np.float32))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 600), density=st.floats(0.0, 1.0),
       encoding=st.sampled_from(ENCODINGS[1:]), transpose=st.booleans(),
       seed=st.integers(0, 2**16))
def test_any_matrix_round_trips(tmp_path_factory, rows, cols, density, encoding, transpose,
                                seed):
  # Empty and full rows, several 256-column slabs, ragged last slab, 1x1.
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((rows, cols)).astype(np.float32)
  keep = rng.random((rows, cols)) < density
  keep[0] = False
  if rows > 1:
    keep[-1] = True
  keep.flat[0] = not keep.all()  # at least one pruned weight (else it is stored densely)
  name = "kernel" if transpose else "table"
  path = tmp_path_factory.mktemp("h") / "m.safetensors"
  export.export_sparse({name: w}, {name: keep}, path, encoding=encoding)
  np.testing.assert_array_equal(export.load_sparse(path)[name], np.where(keep, w, 0))


def test_header(tiny, tmp_path):
  params, config = tiny
  path = tmp_path / "m.safetensors"
  export.export_sparse(params, _masks(params, "2:4"), path, "float16", config=config)
  h = export.read_header(path)
  assert h["format"] == export.FORMAT == "jaxprune-sparse" and h["version"] == export.VERSION
  assert bert.BertConfig.from_hf_dict(h["config"]) == config == export.load_sparse_config(path)
  q = h["tensors"]["bert/encoder/layer/1/intermediate/dense/kernel"]
  assert q["shape"] == [64, 128] and q["dtype"] == "float32" and q["value_dtype"] == "float16"
  assert q["pattern"] == "2:4" and q["sparsity"] == 0.5 and q["nnz"] == 64 * 128 // 2
  assert q["transposed"] is True and q["encoding"] == "bitmask"
  ln = h["tensors"]["bert/embeddings/LayerNorm/scale"]
  assert ln == {"shape": [64], "dtype": "float32", "encoding": "dense",
                "value_dtype": "float32", "stored_bytes": 256}
  assert set(h["crc32"]) == set(load_file(str(path)))


def test_auto_picks_the_smallest_encoding(tiny, tmp_path):
  params, _ = tiny
  for sparsity in (0.5, 0.9, 0.97):
    masks = _masks(params, sparsity)
    sizes = {enc: export.export_sparse(params, masks, tmp_path / f"{enc}.st", encoding=enc)
             for enc in ENCODINGS}
    for i, m in enumerate(sizes["auto"].matrices):
      assert m.stored_bytes == min(sizes[e].matrices[i].stored_bytes for e in ENCODINGS[1:])


def test_patterns_recorded_and_validated(tiny, tmp_path):
  params, _ = tiny
  path = tmp_path / "m.safetensors"
  blocks = masks_lib.magnitude_masks(params, 0.75, masks_lib.BERT_ENCODER_MATRICES,
                                     pattern=masks_lib.Blocks(4, 1))
  export.export_sparse(params, blocks, path, pattern=masks_lib.Blocks(4, 1))
  patterns = {t["pattern"] for t in export.read_header(path)["tensors"].values()
              if t["encoding"] != "dense"}
  assert patterns == {"block:4x1"}
  with pytest.raises(export.PatternError, match=r"kernel: inputs \d+-\d+ of output row"):
    export.export_sparse(params, _masks(params, 0.5), path, pattern=masks_lib.NM(2, 4))
  with pytest.raises(export.PatternError, match="whole 4x4 blocks"):
    export.export_sparse(params, blocks, path, pattern=masks_lib.Blocks(4, 4))


def test_size_report_tiny(tiny, tmp_path):
  params, _ = tiny
  r = export.export_sparse(params, _masks(params, 0.95), tmp_path / "m.st", "float16")
  assert r.dense_matrix_bytes == 4 * sum(m.nnz / (1 - m.sparsity) for m in r.matrices)
  assert r.ratio < 0.05 and r.value_dtype_ratio < 0.10
  assert r.file_bytes == (tmp_path / "m.st").stat().st_size
  assert export.size_report(tmp_path / "m.st") == r
  text = r.format(per_matrix=True)
  assert "bert/encoder/layer/1/output/dense/kernel" in text and "of 262,144 B dense" in text


def test_minilm_90_size_report_and_round_trip(minilm_dir, tmp_path):
  from jaxprune.models import from_pretrained
  _, params, config = from_pretrained(minilm_dir, num_labels=2)
  masks = topk_masks(params, 0.9)
  path = tmp_path / "minilm.safetensors"
  r32 = export.export_sparse(params, masks, path, config=config)
  _assert_bitwise(jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks)),
                  export.load_sparse(path))
  r16 = export.export_sparse(params, masks, path, "float16", config=config)
  print(r16.format())
  assert len(r16.matrices) == 36 and r16.dense_matrix_bytes == 4 * 6 * 384 * 384 * 12
  assert {m.encoding for m in r16.matrices} == {"csr256"}
  # 10% kept at 3 bytes each (fp16 + uint8 offset) plus 2-byte slab counts.
  assert 0.075 < r16.ratio < 0.08 and r32.ratio < 0.13


# --------------------------------------------------------------------------- errors


@pytest.fixture()
def artifact(tiny, tmp_path):
  params, config = tiny
  path = tmp_path / "m.safetensors"
  export.export_sparse(params, _masks(params, 0.9), path, config=config)
  return path


def test_artifact_error_is_a_value_error():
  assert issubclass(export.ArtifactError, ValueError)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.001, 0.5, 0.999])
def test_truncated_artifact(artifact, keep_fraction):
  data = artifact.read_bytes()
  artifact.write_bytes(data[:int(len(data) * keep_fraction)])
  with pytest.raises(export.ArtifactError, match=str(artifact)):
    export.load_sparse(artifact)


def test_corrupted_tensor_bytes(artifact):
  data = bytearray(artifact.read_bytes())
  data[-100] ^= 0xFF  # a byte inside the last tensor's data
  artifact.write_bytes(bytes(data))
  with pytest.raises(export.ArtifactError, match="checksum mismatch.*corrupted"):
    export.load_sparse(artifact)


def test_corrupted_header_json(artifact):
  from safetensors import safe_open
  with safe_open(str(artifact), "np") as f:
    meta = f.metadata()
  save_file(load_file(str(artifact)), str(artifact),
            metadata={"jaxprune": meta["jaxprune"][:-10]})
  with pytest.raises(export.ArtifactError, match="header is not valid JSON"):
    export.load_sparse(artifact)


def test_version_mismatch(artifact):
  _rewrite(artifact, header_fn=lambda h: {**h, "version": export.VERSION + 1})
  with pytest.raises(export.ArtifactError, match=f"version {export.VERSION + 1}; this "
                     f"jaxprune reads version {export.VERSION}"):
    export.load_sparse(artifact)


def test_wrong_format_and_plain_safetensors(artifact, tmp_path):
  _rewrite(artifact, header_fn=lambda h: {**h, "format": "something-else"})
  with pytest.raises(export.ArtifactError, match="expected 'jaxprune-sparse'"):
    export.read_header(artifact)
  plain = tmp_path / "plain.safetensors"
  save_file({"w": np.ones(3, np.float32)}, str(plain), metadata={"format": "pt"})
  with pytest.raises(export.ArtifactError, match="no 'jaxprune' header"):
    export.load_sparse(plain)
  with pytest.raises(export.ArtifactError, match="no such file"):
    export.load_sparse(tmp_path / "missing.safetensors")


def test_header_inconsistent_with_tensors(artifact):
  key = "bert/encoder/layer/0/attention/self/key/kernel"

  def bump_nnz(h):
    h["tensors"][key]["nnz"] += 1
    return h

  _rewrite(artifact, header_fn=bump_nnz)
  with pytest.raises(export.ArtifactError, match=f"{key}: .*nnz="):
    export.load_sparse(artifact)


def test_missing_tensor(artifact):
  name = "bert/pooler/dense/bias"
  _rewrite(artifact, tensors_fn=lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(export.ArtifactError, match="missing: \\['bert/pooler/dense/bias'\\]"):
    export.load_sparse(artifact)


def test_bad_arguments(tiny, tmp_path):
  params, _ = tiny
  masks = _masks(params, 0.9)
  with pytest.raises(ValueError, match="value_dtype 'int8'"):
    export.export_sparse(params, masks, tmp_path / "m", "int8")
  with pytest.raises(ValueError, match="encoding 'zip'"):
    export.export_sparse(params, masks, tmp_path / "m", encoding="zip")
  bad = jax.tree.map(lambda m: m, masks)
  bad["classifier"]["kernel"] = np.ones((3, 3), bool)
  with pytest.raises(ValueError, match=r"mask of classifier/kernel is bool\[3, 3\]; expected "
                     r"bool\[64, 2\]"):
    export.export_sparse(params, bad, tmp_path / "m")
  with pytest.raises(ValueError, match="masks do not match the params tree"):
    export.export_sparse(params, {"bert": masks["bert"]}, tmp_path / "m")
  big = {"kernel": np.full((4, 4), 1e6, np.float32)}
  with pytest.raises(ValueError, match="kernel overflows float16"):
    export.export_sparse(big, {"kernel": np.eye(4, dtype=bool)}, tmp_path / "m", "float16")


# -------------------------------------------------------------------- N:M and formats


def test_check_nm():
  export.check_nm(np.array([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0]]), "w")
  with pytest.raises(export.PatternError,
                     match="w: inputs 4-7 of output row 1 hold 3 nonzeros; 2:4 allows at "
                           "most 2"):
    export.check_nm(np.array([[1.0, 0, 2, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 2, 3, 0]]), "w")
  with pytest.raises(export.PatternError, match="6 inputs is not a multiple of 4"):
    export.check_nm(np.zeros((2, 6)), "w")
  assert export.semi_structured_shape_ok((768, 3072))
  assert not export.semi_structured_shape_ok((32, 32))
  export.check_semi_structured(np.tile([0.0, 1.0, 0.0, 2.0], (32, 16)), "w")
  with pytest.raises(export.PatternError, match=r"w: shape \[32, 32\]; torch 2:4 kernels"):
    export.check_semi_structured(np.tile([0.0, 1.0, 0.0, 2.0], (32, 8)), "w")


def test_export_model_formats(tiny, tmp_path):
  transformers = pytest.importorskip("transformers")
  params, config = tiny
  masks = _masks(params, "2:4")

  hf = export.export_model(params, masks, config, tmp_path / "hf", format="hf")
  tmodel = transformers.BertForSequenceClassification.from_pretrained(hf)
  w = tmodel.bert.encoder.layer[0].intermediate.dense.weight.detach().numpy()
  m = np.asarray(masks["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]).T
  assert np.all(w[~m] == 0) and np.all(w[m] != 0)

  sparse = export.export_model(params, masks, config, tmp_path / "sp", format="sparse")
  assert sorted(p.name for p in sparse.iterdir()) == ["config.json", export.ARTIFACT_NAME]
  _assert_bitwise(jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks)),
                  export.load_sparse(sparse))

  semi = export.export_model(params, masks, config, tmp_path / "24", format="2:4")
  manifest = json.loads((semi / export.MANIFEST_NAME).read_text())
  assert manifest["pattern"] == "2:4" and manifest["dtype"] == "float16"
  assert len(manifest["matrices"]) == 12
  assert "bert.encoder.layer.1.output.dense.weight" in manifest["matrices"]
  state = load_file(str(semi / "model.safetensors"))
  for key in manifest["matrices"]:
    assert state[key].dtype == np.float16
    export.check_nm(state[key], key)

  with pytest.raises(ValueError, match="format 'onnx'"):
    export.export_model(params, masks, config, tmp_path / "x", format="onnx")


def test_export_model_2_4_rejects_bad_matrices(tiny, tmp_path):
  params, config = tiny
  with pytest.raises(export.PatternError, match=r"bert\.encoder\.layer\.0\..*weight: inputs"):
    export.export_model(params, _masks(params, 0.9), config, tmp_path / "x", format="2:4")
  small = _config(hidden_size=32, intermediate_size=64)
  sp = bert.init_params(bert.BertForSequenceClassification(small), jax.random.key(0))
  flags = masks_lib.select(sp, masks_lib.BERT_ENCODER_MATRICES)
  # 2:4 by construction: inputs 2 and 3 of every group of 4 pruned.
  nm = jax.tree.map(lambda p, f: np.broadcast_to((np.arange(p.shape[0]) % 4 < 2)[:, None],
                                                 p.shape) if f else np.ones(p.shape, bool),
                    sp, flags)
  with pytest.raises(export.PatternError, match=r"shape \[32, 32\]; torch 2:4 kernels need"):
    export.export_model(sp, nm, small, tmp_path / "x", format="2:4")
  with pytest.raises(export.PatternError, match="no pruned matrix"):
    export.export_model(params, jax.tree.map(lambda p: np.ones(p.shape, bool), params),
                        config, tmp_path / "x", format="2:4")
  assert not (tmp_path / "x").exists()


def test_masks_none_uses_exact_zeros(tiny, tmp_path):
  params, config = tiny
  masks = _masks(params, 0.9)
  pruned = jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks))
  a = export.export_sparse(pruned, None, tmp_path / "a.st")
  b = export.export_sparse(params, masks, tmp_path / "b.st")
  assert [m.nnz for m in a.matrices] == [m.nnz for m in b.matrices]
  _assert_bitwise(export.load_sparse(tmp_path / "a.st"), export.load_sparse(tmp_path / "b.st"))
  hf = export.export_hf(params, config, tmp_path / "hf", masks=masks)
  state = load_file(str(hf / "model.safetensors"))
  assert (state["bert.encoder.layer.0.attention.self.query.weight"] == 0).mean() >= 0.9
  shutil.rmtree(hf)


# ------------------------------------------------------------------------------ docs


def test_docstring_examples_run(tiny, tmp_path, monkeypatch):
  # The Example:: blocks of the artifact functions, in order, on the tiny model.
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  params, config = tiny
  masks = _masks(params, 0.9)
  monkeypatch.chdir(tmp_path)
  ns = {**vars(export), "params": params, "masks": masks, "config": config,
        "model": bert.BertForSequenceClassification(config), "ids": np.ones((2, 8), np.int32),
        "tmodel": transformers.BertForSequenceClassification(
            transformers.BertConfig(**config.to_hf_dict())),
        "torch": torch, "transformers": transformers}

  def run(fn):
    exec(_example(fn), ns)  # pylint: disable=exec-used

  run(export.export_sparse)
  assert 0 < ns["ratio"] < 0.1
  run(export.read_header)
  assert ns["info"] == {"shape": [64, 2], "dtype": "float32", "encoding": "dense",
                        "value_dtype": "float32", "stored_bytes": 512}
  run(export.load_sparse)
  assert ns["logits"].shape == (2, 2)
  run(export.load_sparse_state_dict)
  query = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
  keep = masks["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
  got = ns["tmodel"].bert.encoder.layer[0].attention.self.query.weight.detach().numpy()
  np.testing.assert_array_equal(got, np.where(keep, query, 0).astype(np.float16).T)
  run(export.export_hf)
  assert ns["tmodel"].config.hidden_size == 64


def test_export_model_docstring_example(tiny, tmp_path, monkeypatch, minilm_dir):
  params, config = tiny
  monkeypatch.chdir(tmp_path)
  ns = {**vars(export), "params": params, "masks": _masks(params, 0.9), "config": config}
  exec(_example(export.export_model), ns)  # pylint: disable=exec-used
  assert (tmp_path / "out" / "vocab.txt").is_file()
  assert {t.get("value_dtype") for t in export.read_header("out")["tensors"].values()
          if t["encoding"] != "dense"} == {"float16"}
  del minilm_dir  # the example's tokenizer_from="minilm-l6"


def _doc_decoder():
  """The numpy-only reader shown to PyTorch users in docs/export.md."""
  from pathlib import Path
  text = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()
  block = text.split("<!-- standalone-decoder -->", 1)[1].split("```python\n", 1)[1]
  namespace = {}
  exec(block.split("```", 1)[0], namespace)  # pylint: disable=exec-used
  return namespace["read_jaxprune_sparse"]


@pytest.mark.parametrize("encoding,value_dtype", [("bitmask", "float32"), ("csr", "float16"),
                                                  ("csr256", "bfloat16")])
def test_docs_standalone_decoder(tiny, tmp_path, encoding, value_dtype):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  params, config = tiny
  path = tmp_path / "m.safetensors"
  export.export_sparse(params, _masks(params, 0.9), path, value_dtype, config=config,
                       encoding=encoding)
  state = _doc_decoder()(str(path))
  expected = export.load_sparse_state_dict(path)
  assert state.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(state[key], value)
  model = transformers.BertForSequenceClassification(transformers.BertConfig(
      **config.to_hf_dict()))
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
  assert not unexpected and all(k.endswith("position_ids") for k in missing)
