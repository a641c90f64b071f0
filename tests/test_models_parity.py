"""The Flax BERT against transformers' PyTorch BERT: tiny random weights and real MiniLM-L6."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import read_mrpc_pairs  # noqa: E402
from jaxprune import models  # noqa: E402
from jaxprune.models import bert  # noqa: E402

ATOL = 1e-4


def _torch_outputs(tmodel, batch):
  with torch.no_grad():
    return tmodel(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()},
                  output_hidden_states=True, output_attentions=True)


def _flax_outputs(model, params, batch):
  return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                     batch["token_type_ids"], output_hidden_states=True,
                     output_attention_scores=True)


def _max_diffs(out, tout, mask, with_logits=True):
  """Max abs differences of logits, hidden states and attention probabilities.

  Hidden states are compared at real tokens: at padded positions nothing downstream
  reads them, and transformers treats fully padded query rows differently (they still
  agree to ~1e-4 there).
  """
  real = np.asarray(mask, bool)
  hidden = max(float(np.abs(np.asarray(a) - b.numpy())[real].max())
               for a, b in zip(out.hidden_states, tout.hidden_states, strict=True))
  probs = max(float(np.abs(np.asarray(jax.nn.softmax(a, axis=-1)) - b.numpy()).max())
              for a, b in zip(out.attention_scores, tout.attentions, strict=True))
  diffs = {"hidden": hidden, "attention_probs": probs}
  if with_logits:
    diffs["logits"] = float(np.abs(np.asarray(out.logits) - tout.logits.numpy()).max())
  return diffs


def _random_batch(rng, vocab, batch=3, length=12):
  ids = rng.integers(1, vocab, size=(batch, length))
  lengths = np.array([length, length // 2, 3])[:batch]
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  types = (np.arange(length)[None] >= (lengths[:, None] // 2)).astype(np.int64) * mask
  return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A randomly initialised tiny HF BertForSequenceClassification saved to disk."""
  torch.manual_seed(0)
  hf_config = transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
      intermediate_size=37, max_position_embeddings=40, num_labels=3,
      attn_implementation="eager")
  tmodel = transformers.BertForSequenceClassification(hf_config).eval()
  # Non-trivial LayerNorm and bias values, so a transposition or name mix-up shows.
  with torch.no_grad():
    for name, p in tmodel.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("tiny-bert")
  tmodel.save_pretrained(path)
  return path, tmodel


def test_tiny_random_parity(tiny_checkpoint):
  path, tmodel = tiny_checkpoint
  model, params, config = models.from_pretrained(path)
  assert config.num_labels == 3 and config.num_hidden_layers == 3
  batch = _random_batch(np.random.default_rng(0), config.vocab_size)
  diffs = _max_diffs(_flax_outputs(model, params, batch), _torch_outputs(tmodel, batch),
                     batch["attention_mask"])
  assert max(diffs.values()) < ATOL, diffs


def test_tiny_bare_encoder_parity(tiny_checkpoint, tmp_path):
  """A BertModel checkpoint (no ``bert.`` prefix, no classifier) loads; pooler matches."""
  _, tcls = tiny_checkpoint
  tcls.bert.save_pretrained(tmp_path)
  model, params, _ = models.from_pretrained(tmp_path, num_labels=2)
  batch = _random_batch(np.random.default_rng(1), 99)
  out = _flax_outputs(model, params, batch)
  tout = _torch_outputs(tcls.bert, batch)
  diffs = _max_diffs(out, tout, batch["attention_mask"], with_logits=False)
  diffs["pooled"] = float(np.abs(np.asarray(out.pooled) - tout.pooler_output.numpy()).max())
  assert max(diffs.values()) < ATOL, diffs
  # The fresh classifier: N(0, 0.02) kernel, zero bias.
  kernel = np.asarray(params["classifier"]["kernel"])
  assert kernel.shape == (32, 2) and 0.005 < kernel.std() < 0.05
  np.testing.assert_array_equal(params["classifier"]["bias"], 0.0)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return models.from_pretrained(minilm_dir, num_labels=2, seed=3)


@pytest.fixture(scope="module")
def mrpc_batch(glue_dir):
  tok = models.load_tokenizer("minilm-l6")
  s1, s2 = zip(*read_mrpc_pairs(glue_dir, 6))
  # Pairs of different lengths padded to the longest: real padding in the batch.
  enc = tok(list(s1), list(s2), padding="longest", truncation=True, max_length=128,
            return_tensors="np")
  enc = {k: np.asarray(v) for k, v in enc.items()}
  assert (enc["attention_mask"] == 0).any(), "the batch should contain padding"
  return enc


def test_minilm_parity_bert_model(minilm, minilm_dir, mrpc_batch):
  model, params, _ = minilm
  tmodel = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
  out = _flax_outputs(model, params, mrpc_batch)
  tout = _torch_outputs(tmodel, mrpc_batch)
  diffs = _max_diffs(out, tout, mrpc_batch["attention_mask"], with_logits=False)
  diffs["pooled"] = float(np.abs(np.asarray(out.pooled) - tout.pooler_output.numpy()).max())
  print("MiniLM-L6 BertModel max abs diffs:", diffs)
  assert max(diffs.values()) < ATOL, diffs


def test_minilm_parity_sequence_classification(minilm, mrpc_batch, tmp_path):
  model, params, config = minilm
  models.export_hf(params, config, tmp_path / "cls")
  tmodel = transformers.BertForSequenceClassification.from_pretrained(
      tmp_path / "cls", attn_implementation="eager").eval()
  diffs = _max_diffs(_flax_outputs(model, params, mrpc_batch),
                     _torch_outputs(tmodel, mrpc_batch), mrpc_batch["attention_mask"])
  print("MiniLM-L6 BertForSequenceClassification max abs diffs:", diffs)
  assert max(diffs.values()) < ATOL, diffs


def test_attention_scores_are_masked_and_scaled(minilm, mrpc_batch):
  model, params, config = minilm
  out = _flax_outputs(model, params, mrpc_batch)
  scores = np.asarray(out.attention_scores[0])
  pad = mrpc_batch["attention_mask"][:, None, None, :] == 0
  assert scores.shape == (6, config.num_attention_heads) + (pad.shape[-1],) * 2
  assert (scores[np.broadcast_to(pad, scores.shape)] < -1000).all()
  assert (np.abs(scores[np.broadcast_to(~pad, scores.shape)]) < 100).all()
  # Scaled by 1/sqrt(head_dim): recompute layer 0's scores from its query/key.
  x = np.asarray(out.hidden_states[0][:1])
  attn = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]
  q = (x @ attn["query"]["kernel"] + attn["query"]["bias"]).reshape(1, -1, 12, 32)
  k = (x @ attn["key"]["kernel"] + attn["key"]["bias"]).reshape(1, -1, 12, 32)
  expected = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(32)
  expected = expected + np.where(pad[:1], bert.MASK_VALUE, 0.0)
  np.testing.assert_allclose(scores[:1], expected, atol=2e-4, rtol=1e-4)


def test_classifier_relu_quirk(tiny_checkpoint):
  path, _ = tiny_checkpoint
  model, params, _ = models.from_pretrained(path)
  relu_model, _, _ = models.from_pretrained(path, classifier_relu=True)
  batch = _random_batch(np.random.default_rng(2), 99)
  pooled = _flax_outputs(model, params, batch).pooled
  logits = _flax_outputs(relu_model, params, batch).logits
  cls = params["classifier"]
  np.testing.assert_allclose(logits, np.maximum(pooled, 0) @ cls["kernel"] + cls["bias"],
                             atol=1e-6)


def test_dropout_is_seeded_and_off_when_deterministic():
  model = bert.BertForSequenceClassification(bert.BertConfig.tiny())
  params = bert.init_params(model, jax.random.key(0))
  ids = jnp.arange(2 * 10).reshape(2, 10) % 100 + 1

  def run(rng=None):
    kwargs = {"rngs": {"dropout": rng}, "deterministic": False} if rng is not None else {}
    return np.asarray(model.apply({"params": params}, ids, **kwargs).logits)

  np.testing.assert_array_equal(run(), run())
  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
  assert not np.allclose(run(), run(jax.random.key(1)))


def test_bfloat16_compute_stays_close():
  config = bert.BertConfig.tiny()
  params = bert.init_params(bert.BertForSequenceClassification(config), jax.random.key(0))
  ids = jnp.arange(2 * 10).reshape(2, 10) % 100 + 1
  f32 = bert.BertForSequenceClassification(config).apply({"params": params}, ids)
  bf16 = bert.BertForSequenceClassification(config.replace(dtype="bfloat16")).apply(
      {"params": params}, ids)
  assert bf16.last_hidden_state.dtype == jnp.bfloat16 and bf16.logits.dtype == jnp.float32
  np.testing.assert_allclose(bf16.logits, f32.logits, atol=3e-2)


def test_logical_axes_name_every_weight():
  model = bert.BertForSequenceClassification(bert.BertConfig.tiny())
  axes = models.logical_axes(model)
  attn = axes["bert"]["encoder"]["layer"]["1"]
  assert tuple(attn["attention"]["self"]["query"]["kernel"]) == ("embed", "heads")
  assert tuple(attn["attention"]["output"]["dense"]["kernel"]) == ("heads", "embed")
  assert tuple(attn["intermediate"]["dense"]["kernel"]) == ("embed", "mlp")
  assert tuple(attn["output"]["dense"]["kernel"]) == ("mlp", "embed")
  assert tuple(axes["bert"]["embeddings"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
  params = bert.init_params(model, jax.random.key(0))
  spec_leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(spec_leaves) == len(jax.tree.leaves(params))
  for spec, p in zip(spec_leaves, jax.tree.leaves(params)):
    assert len(spec) == p.ndim and all(a is not None for a in spec)
