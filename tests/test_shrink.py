"""Structured shrinking on tiny trees: hand-checked kept units, exactness where it is
defined (nothing removed, FFN neurons, layers), width rules, Taylor scores, and the
export loading in transformers with the same logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import models
from jaxprune.models import bert

# 2 layers, hidden 8, 2 heads of 4 dims, FFN 16.
HAND = bert.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=16, max_position_embeddings=8,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def layer(params, i):
  return params["bert"]["encoder"]["layer"][str(i)]


@pytest.fixture(scope="module")
def hand_params():
  """Every weight 0.01, then a few made large so that each ranking is known.

  Marks that span every hidden row (or column) add the same amount to every hidden
  dimension, so only the embedding columns decide the hidden ranking.
  """
  p = jax.tree.map(lambda x: np.full(x.shape, 0.01, np.float32),
                   bert.init_params(bert.BertForSequenceClassification(HAND), jax.random.key(0)))
  p["bert"]["embeddings"]["word_embeddings"]["embedding"][:, [1, 2, 5, 7]] = 10.0  # hidden
  layer(p, 0)["attention"]["self"]["query"]["kernel"][:, 4:8] = 1.0  # layer 0: head 1
  layer(p, 1)["attention"]["output"]["dense"]["kernel"][0:4, :] = 1.0  # layer 1: head 0
  layer(p, 0)["intermediate"]["dense"]["kernel"][:, [3, 9]] = 1.0  # layer 0 FFN: 3, 9, 12
  layer(p, 0)["output"]["dense"]["kernel"][12, :] = 1.0
  layer(p, 1)["intermediate"]["dense"]["bias"][[0, 7, 15]] = 1.0  # layer 1 FFN: 0, 7, 15
  p["classifier"]["kernel"][6, :] = 1.0  # pooler outputs 2 and 6, then ties: 0, 1
  p["bert"]["pooler"]["dense"]["bias"][2] = 1.0
  return p


def test_uniform_layers_end_at_the_last_layer():
  assert models.uniform_layers(12, 4) == (2, 5, 8, 11)  # TinyBERT-4's teacher layers
  assert models.uniform_layers(6, 3) == (1, 3, 5)
  assert models.uniform_layers(6, 4) == (0, 2, 3, 5)
  assert models.uniform_layers(6, 6) == tuple(range(6))
  # The layers the distillation layer map matches student layers to.
  from jaxprune import distill
  assert models.uniform_layers(12, 4) == distill.layer_map(4, 12)[0]


def test_hand_checked_kept_units(hand_params):
  plan = models.plan_shrink(hand_params, HAND, heads=1, intermediate=3)
  assert plan == models.ShrinkPlan(layers=(0, 1), heads=((1,), (0,)),
                                   intermediate=((3, 9, 12), (0, 7, 15)),
                                   hidden=(1, 2, 5, 7), pooler=(0, 1, 2, 6))
  small, config = models.shrink(hand_params, HAND, heads=1, intermediate=3)
  assert (config.hidden_size, config.num_attention_heads, config.intermediate_size,
          config.num_hidden_layers) == (4, 1, 3, 2)
  hidden, pooler = [1, 2, 5, 7], [0, 1, 2, 6]
  q = layer(hand_params, 0)["attention"]["self"]["query"]["kernel"]
  np.testing.assert_array_equal(layer(small, 0)["attention"]["self"]["query"]["kernel"],
                                q[hidden][:, 4:8])
  out = layer(hand_params, 1)["attention"]["output"]["dense"]["kernel"]
  np.testing.assert_array_equal(layer(small, 1)["attention"]["output"]["dense"]["kernel"],
                                out[0:4][:, hidden])
  ffn_out = layer(hand_params, 0)["output"]["dense"]["kernel"]
  np.testing.assert_array_equal(layer(small, 0)["output"]["dense"]["kernel"],
                                ffn_out[[3, 9, 12]][:, hidden])
  np.testing.assert_array_equal(small["bert"]["pooler"]["dense"]["kernel"],
                                hand_params["bert"]["pooler"]["dense"]["kernel"][hidden][:, pooler])
  np.testing.assert_array_equal(small["classifier"]["kernel"],
                                hand_params["classifier"]["kernel"][pooler])
  words = lambda p: p["bert"]["embeddings"]["word_embeddings"]["embedding"]
  np.testing.assert_array_equal(words(small), words(hand_params)[:, hidden])
  # The same tree structure: training, checkpoints and export see an ordinary BERT.
  expected = jax.tree.map(np.shape, bert.init_params(bert.BertForSequenceClassification(config),
                                                     jax.random.key(1)))
  assert jax.tree.map(np.shape, small) == expected


def test_explicit_layers_and_given_scores(hand_params):
  plan = models.plan_shrink(hand_params, HAND, layers=[1], heads=1)
  assert plan.layers == (1,) and plan.heads == ((0,),)  # layer 1's own ranking
  # Given scores win over magnitude (per-layer groups indexed by the ORIGINAL layers).
  scores = {"heads": np.array([[5.0, 1.0], [0.0, 2.0]])}
  assert models.plan_shrink(hand_params, HAND, heads=1, scores=scores).heads == ((0,), (1,))
  assert models.plan_shrink(hand_params, HAND, layers=[1], heads=1,
                            scores=scores).heads == ((1,),)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=6), "hidden=6 is not a multiple of head_dim 4"),
    (dict(heads=1, hidden=8), r"heads=1 with hidden=8: .* = 4 \(head_dim 4 is kept\)"),
    (dict(heads=3), r"heads=3: expected an int in 1..2"),
    (dict(intermediate=0), r"intermediate=0: expected an int in 1..16"),
    (dict(layers=[1, 0]), r"layers=\[1, 0\]: expected distinct ascending"),
    (dict(layers=3), r"layers=3: expected 1..2"),
])
def test_widths_hf_cannot_represent_are_rejected(hand_params, kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.shrink(hand_params, HAND, **kwargs)


def test_hidden_alone_sets_the_heads(hand_params):
  _, config = models.shrink(hand_params, HAND, hidden=4)
  assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (4, 1, 4)


@pytest.fixture(scope="module")
def tiny():
  config = bert.BertConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                num_labels=3)
  params = bert.init_params(bert.BertForSequenceClassification(config), jax.random.key(3))
  # Non-trivial LayerNorms and biases, so a wrong cut shows.
  rs = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.1 * rs.standard_normal(x.shape, np.float32), params)
  ids = rs.integers(1, config.vocab_size, (3, 10))
  mask = (np.arange(10)[None] < np.array([[10], [6], [3]])).astype(np.int32)
  batch = dict(input_ids=ids * mask, attention_mask=mask, token_type_ids=np.zeros_like(ids))
  return config, params, batch


def forward(config, params, batch):
  return bert.BertForSequenceClassification(config).apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
      output_hidden_states=True, output_attention_scores=True)


def test_nothing_removed_is_the_same_model(tiny):
  config, params, batch = tiny
  same, same_config = models.shrink(params, config)
  assert same_config == config
  jax.tree.map(np.testing.assert_array_equal, same, params)
  a, b = forward(config, params, batch), forward(same_config, same, batch)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_dropping_ffn_neurons_is_zeroing_their_output_rows(tiny):
  config, params, batch = tiny
  plan = models.plan_shrink(params, config, intermediate=20)
  small, small_config = models.apply_plan(params, config, plan)
  masked = jax.tree.map(lambda x: x, params)
  for i, kept in enumerate(plan.intermediate):
    dropped = np.setdiff1d(np.arange(config.intermediate_size), kept)
    kernel = layer(masked, i)["output"]["dense"]["kernel"]
    layer(masked, i)["output"]["dense"]["kernel"] = kernel.at[dropped].set(0.0)
  a, b = forward(config, masked, batch), forward(small_config, small, batch)
  np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
  for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_dropping_layers_is_skipping_them(tiny):
  config, params, batch = tiny
  small, small_config = models.shrink(params, config, layers=1)  # keeps the last: layer 1
  full = forward(config, params, batch)
  mask_bias = jnp.where(batch["attention_mask"][:, None, None, :] > 0, 0.0, bert.MASK_VALUE)
  skipped, _ = bert.BertLayer(config).apply({"params": layer(params, 1)},
                                            full.hidden_states[0], mask_bias, True)
  out = forward(small_config, small, batch)
  np.testing.assert_allclose(out.hidden_states[-1], skipped, atol=1e-5)
  np.testing.assert_allclose(out.hidden_states[0], full.hidden_states[0])


def test_taylor_scores_are_squared_sums_of_g_times_w(hand_params):
  # loss = b * sum(every weight): g = b everywhere, so a unit's score is
  # mean_b(b^2) * (sum of its weights)^2 = 5 * (...)^2 for b in (1, 3).
  loss = lambda p, b: b * sum(jnp.sum(x) for x in jax.tree.leaves(p))
  scores = models.taylor_scores(loss, hand_params, [1.0, 3.0], HAND)
  a = layer(hand_params, 0)["attention"]
  head1 = sum(float(np.sum(a["self"][m]["kernel"][:, 4:8]) + np.sum(a["self"][m]["bias"][4:8]))
              for m in ("query", "key", "value"))
  head1 += float(np.sum(a["output"]["dense"]["kernel"][4:8]))
  np.testing.assert_allclose(scores["heads"][0, 1], 5 * head1 ** 2, rtol=1e-5)
  f = layer(hand_params, 1)
  ffn_in, ffn_out = f["intermediate"]["dense"], f["output"]["dense"]
  neuron7 = float(np.sum(ffn_in["kernel"][:, 7]) + ffn_in["bias"][7]
                  + np.sum(ffn_out["kernel"][7]))
  np.testing.assert_allclose(scores["intermediate"][1, 7], 5 * neuron7 ** 2, rtol=1e-5)
  assert {k: v.shape for k, v in scores.items()} == {
      "hidden": (8,), "pooler": (8,), "heads": (2, 2), "intermediate": (2, 16)}
  assert models.plan_shrink(hand_params, HAND, heads=1, scores=scores).heads == ((1,), (0,))


def test_encoder_weight_count():
  assert models.encoder_weight_count(HAND) == 2 * (4 * 64 + 2 * 8 * 16)


def test_export_of_a_shrunk_model_loads_in_transformers(tiny, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config, params, batch = tiny
  small, small_config = models.shrink(params, config, layers=1, heads=2, intermediate=40)
  assert small_config.hidden_size == 16
  models.export_hf(small, small_config, tmp_path / "small")
  tmodel, info = transformers.BertForSequenceClassification.from_pretrained(
      tmp_path / "small", attn_implementation="eager", output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched keys
  with torch.no_grad():
    logits = tmodel.eval()(**{k: torch.tensor(np.asarray(v), dtype=torch.long)
                              for k, v in batch.items()}).logits.numpy()
  np.testing.assert_allclose(forward(small_config, small, batch).logits, logits, atol=1e-4)


def test_shrunk_student_distils_from_a_wider_deeper_teacher_end_to_end(glue_dir, minilm_dir,
                                                                       tmp_path):
  """The tiny config's 2 x 32 (4 heads) student shrunk to 1 x 16 (2 heads), dense
  distillation from a 2 x 32 teacher: W_h 16 -> 32, teacher heads averaged in pairs."""
  import importlib.util
  import json
  from pathlib import Path

  import orbax.checkpoint as ocp
  from safetensors.numpy import load_file

  from jaxprune import trainer
  root = Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("tiny_config", root / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("steps=4")
  _, teacher_params, teacher_config = models.from_config(
      "minilm-l6", num_labels=2, seed=1, **config.model_overrides)
  models.export_hf(teacher_params, teacher_config, tmp_path / "teacher")
  config.teacher = str(tmp_path / "teacher")
  config.method = "distill"
  config.student.layers, config.student.heads = 1, 2
  summary = trainer.train_and_evaluate(config, tmp_path / "student", "prune", progress=False)
  assert summary["steps"] == 4 and summary["encoder_sparsity"] == 0.0
  assert summary["encoder_size"] == models.encoder_weight_count(
      teacher_config.replace(num_hidden_layers=1, hidden_size=16, num_attention_heads=2))
  # W_h trained with the student, checkpointed with the state, not exported.
  saved = ocp.StandardCheckpointer().metadata(
      tmp_path / "student" / "checkpoints" / "4" / "state").item_metadata
  assert saved["params"]["distill"]["hidden_map"]["kernel"].shape == (16, 32)
  rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").open()]
  assert all(r["hidden_loss"] > 0 for r in rows if r["kind"] == "train")
  exported = load_file(tmp_path / "student" / "hf" / "model.safetensors")
  assert not any(k.startswith("distill") for k in exported)
  _, params, student_config = models.from_pretrained(tmp_path / "student" / "hf")
  assert (student_config.num_hidden_layers, student_config.hidden_size,
          student_config.num_attention_heads) == (1, 16, 2)
  transformers = pytest.importorskip("transformers")
  transformers.BertForSequenceClassification.from_pretrained(tmp_path / "student" / "hf")


def test_student_sizes_are_validated():
  from jaxprune import config as config_lib
  config = config_lib.base_config()
  config.student.heads = -1
  with pytest.raises(config_lib.ConfigError, match=r"student.heads=-1: expected an int >= 0"):
    config_lib.validate(config, "prune")
