"""HF checkpoint import/export: round trips and the one-line errors for bad inputs."""

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxprune import models
from jaxprune.models import convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return models.from_pretrained(minilm_dir, num_labels=3, seed=1)


@pytest.fixture(scope="module")
def exported(minilm, tmp_path_factory):
  _, params, config = minilm
  out = tmp_path_factory.mktemp("export") / "minilm-cls"
  models.export_hf(params, config, out, tokenizer_from="minilm-l6")
  return out


def test_export_loads_in_transformers_with_same_logits(minilm, exported):
  model, params, _ = minilm
  tmodel, info = transformers.BertForSequenceClassification.from_pretrained(
      exported, attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  assert tmodel.config.num_labels == 3
  tok = transformers.AutoTokenizer.from_pretrained(exported)
  enc = tok(["the cat sat on the mat", "a much longer second sentence about dogs"],
            ["pair one", "pair two"], padding=True, return_tensors="np")
  flax_logits = np.asarray(model.apply({"params": params}, enc["input_ids"],
                                       enc["attention_mask"], enc["token_type_ids"]).logits)
  with torch.no_grad():
    torch_logits = tmodel.eval()(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
  diff = np.abs(flax_logits - torch_logits).max()
  print("export round trip: max |logits diff| =", diff)
  assert diff < 1e-4


def test_export_reimport_is_bitwise(minilm, exported):
  _, params, config = minilm
  _, again, config2 = models.from_pretrained(exported)
  assert config2 == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(params) == jax.tree.structure(again)


def test_export_layout(exported):
  state = load_file(str(exported / "model.safetensors"))
  assert state["bert.encoder.layer.0.intermediate.dense.weight"].shape == (1536, 384)
  assert state["bert.embeddings.LayerNorm.weight"].shape == (384,)
  assert state["classifier.weight"].shape == (3, 384)
  from safetensors import safe_open
  with safe_open(str(exported / "model.safetensors"), "np") as f:
    assert f.metadata() == {"format": "pt"}
  assert (exported / "vocab.txt").is_file() and (exported / "tokenizer.json").is_file()
  assert not list(exported.parent.glob("*.tmp-export"))


def test_regression_head_export(minilm_dir, tmp_path):
  model, params, config = models.from_pretrained(minilm_dir, num_labels=1)
  assert params["classifier"]["kernel"].shape == (384, 1)
  models.export_hf(params, config, tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["num_labels"] == 1 and cfg["problem_type"] == "regression"


def test_missing_heads_get_the_values_a_full_init_gives_them(tmp_path):
  """from_pretrained initialises only the heads a checkpoint lacks (the rest of the
  random init is never computed); they equal a full init's heads for the same seed."""
  tiny = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64)
  _, full, config = models.from_config("minilm-l6", num_labels=3, seed=1, **tiny)
  models.export_hf(jax.tree.map(np.zeros_like, full), config, tmp_path)
  state = load_file(str(tmp_path / "model.safetensors"))
  kept = {k: v for k, v in state.items() if not k.startswith(("bert.pooler.", "classifier."))}
  assert len(kept) < len(state)
  save_file(kept, str(tmp_path / "model.safetensors"))
  _, params, _ = models.from_pretrained(tmp_path, num_labels=3, seed=1)
  for head in (params["classifier"], params["bert"]["pooler"]["dense"]):
    assert np.any(head["kernel"] != 0)
  np.testing.assert_array_equal(params["classifier"]["kernel"], full["classifier"]["kernel"])
  np.testing.assert_array_equal(params["bert"]["pooler"]["dense"]["kernel"],
                                full["bert"]["pooler"]["dense"]["kernel"])
  assert not np.any(params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]
                    ["kernel"])  # loaded: the zeros written above


def test_old_gamma_beta_names_and_prefix(tmp_path, minilm_dir):
  state = load_file(str(minilm_dir / "model.safetensors"))
  renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
             .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()}
  save_file(renamed, str(tmp_path / "model.safetensors"))
  shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
  _, params, _ = models.from_pretrained(tmp_path)
  np.testing.assert_array_equal(params["bert"]["embeddings"]["LayerNorm"]["scale"],
                                state["embeddings.LayerNorm.weight"])


def test_name_mapping_round_trip():
  for key in ["bert.encoder.layer.11.attention.self.query.weight",
              "bert.encoder.layer.0.output.LayerNorm.bias",
              "bert.embeddings.word_embeddings.weight", "bert.pooler.dense.bias",
              "classifier.weight"]:
    path, transpose = convert._flax_path(key)
    assert convert._hf_key(path) == (key, transpose)
  assert convert._flax_path("encoder.layer.2.intermediate.dense.weight") == (
      "bert/encoder/layer/2/intermediate/dense/kernel", True)


# --- bad inputs: each one line naming the file/tensor and what was expected ---------


def _copy_checkpoint(src, dst):
  for name in ("config.json", "model.safetensors"):
    shutil.copy(src / name, dst / name)
  return dst


def _one_line_error(exc_info, *needles):
  msg = str(exc_info.value)
  assert "\n" not in msg, msg
  for needle in needles:
    assert needle in msg, (needle, msg)


def test_missing_config(tmp_path, minilm_dir):
  shutil.copy(minilm_dir / "model.safetensors", tmp_path / "model.safetensors")
  with pytest.raises(models.ModelNotFoundError) as e:
    models.from_pretrained(tmp_path)
  _one_line_error(e, "config.json", str(tmp_path))


def test_missing_weights_file(tmp_path, minilm_dir):
  shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
  with pytest.raises(models.CheckpointError) as e:
    models.from_pretrained(tmp_path)
  _one_line_error(e, "model.safetensors", "no such file")


def test_wrong_shape_tensor(tmp_path, minilm_dir):
  _copy_checkpoint(minilm_dir, tmp_path)
  state = load_file(str(tmp_path / "model.safetensors"))
  state["encoder.layer.3.intermediate.dense.weight"] = np.zeros((1000, 384), np.float32)
  del state["encoder.layer.5.output.dense.bias"]
  state["encoder.layer.0.attention.self.extra.weight"] = np.zeros((4, 4), np.float32)
  save_file(state, str(tmp_path / "model.safetensors"))
  with pytest.raises(models.CheckpointError) as e:
    models.from_pretrained(tmp_path)
  _one_line_error(e, "bert/encoder/layer/3/intermediate/dense/kernel (384, 1000) "
                  "(expected (384, 1536))", "missing: bert/encoder/layer/5/output/dense/bias",
                  "unexpected: bert/encoder/layer/0/attention/self/extra/kernel")


def test_wrong_num_labels_head(tmp_path, minilm_dir, minilm):
  _, params, config = minilm
  models.export_hf(params, config, tmp_path / "three")
  with pytest.raises(models.CheckpointError) as e:
    models.from_pretrained(tmp_path / "three", num_labels=2)
  _one_line_error(e, "classifier/kernel (384, 3) (expected (384, 2))")


def test_truncated_safetensors(tmp_path, minilm_dir):
  _copy_checkpoint(minilm_dir, tmp_path)
  data = (tmp_path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(models.CheckpointError) as e:
    models.from_pretrained(tmp_path)
  _one_line_error(e, "model.safetensors", "not a readable safetensors file")


def test_bad_config_values(tmp_path, minilm_dir):
  _copy_checkpoint(minilm_dir, tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["hidden_act"] = "swish-ish"
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(models.CheckpointError) as e:
    models.from_pretrained(tmp_path)
  _one_line_error(e, "config.json", "hidden_act 'swish-ish'")


def test_unknown_model_name():
  with pytest.raises(models.ModelNotFoundError) as e:
    models.from_pretrained("no-such-org/no-such-bert-model")
  _one_line_error(e, "no-such-org/no-such-bert-model", "minilm-l6")
  with pytest.raises(models.ModelNotFoundError) as e:
    models.from_pretrained("./not/a/dir")
  _one_line_error(e, "not a directory")
