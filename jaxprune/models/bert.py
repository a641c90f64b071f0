"""A Flax Linen BERT that computes what Hugging Face's BERT checkpoints compute.

Parameter paths follow Hugging Face's module names, so path regexes read the same as
the PyTorch state-dict keys (``bert/encoder/layer/3/attention/self/query/kernel`` is
``bert.encoder.layer.3.attention.self.query.weight``, transposed). Every weight carries
logical axis names so that sharding rules can place it on a device mesh:

==============  =====================================================================
logical axis    meaning
==============  =====================================================================
``vocab``       word-embedding rows
``embed``       the hidden (model) dimension
``heads``       the concatenated attention heads (num_heads * head_dim)
``mlp``         the feed-forward intermediate dimension
``positions``   position / token-type embedding rows
``labels``      classifier outputs
==============  =====================================================================

The model returns what distillation needs: logits, the embedding output followed by
every layer's output, and every layer's attention *scores* (pre-softmax, scaled by
1/sqrt(head_dim), with the additive padding mask applied).

Example::

  config = BertConfig.tiny()
  model = BertForSequenceClassification(config)
  params = init_params(model, jax.random.key(0))
  out = model.apply({"params": params}, ids, mask, types,
                    output_hidden_states=True, output_attention_scores=True)
  out.logits, out.hidden_states[0], out.attention_scores[-1]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
from flax import traverse_util
import jax
import jax.numpy as jnp

__all__ = [
    "BertConfig",
    "BertOutput",
    "BertModel",
    "BertForSequenceClassification",
    "MASK_VALUE",
    "abstract_params",
    "init_params",
    "logical_axes",
]

# The additive attention-mask value of BERT's original code (and of the SparseBERT
# reference): scores of padded keys become score - 10000. Distillation relies on it
# (entries <= -100 are treated as padding).
MASK_VALUE = -10000.0

_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
}

# Fields of a Hugging Face BertConfig that BertConfig reads; everything else is kept in
# ``extra`` only when it does not change the computation.
_HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "hidden_dropout_prob",
              "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "initializer_range", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture of a BERT model (Hugging Face field names).

  Attributes beyond Hugging Face's: ``num_labels`` (1 means a regression head, as for
  STS-B), ``classifier_relu`` (the SparseBERT/TinyBERT reference applies ReLU between the
  tanh pooler and the classifier; standard BERT does not), ``dtype`` (the compute dtype
  of activations; parameters stay ``param_dtype``).
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  pad_token_id: int = 0
  num_labels: int = 2
  classifier_relu: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r}: expected one of {sorted(_ACTIVATIONS)}")
    if self.num_labels < 1:
      raise ValueError(f"num_labels {self.num_labels}: expected >= 1 (1 = regression)")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes: Any) -> "BertConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def tiny(cls, **changes: Any) -> "BertConfig":
    """A 2-layer, 32-wide BERT for tests (vocab 128)."""
    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64)
    return cls(**{**base, **changes})

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "BertConfig":
    """Builds a config from a Hugging Face ``config.json`` dict (+ overrides)."""
    kwargs = {k: d[k] for k in _HF_FIELDS if k in d and d[k] is not None}
    if "num_labels" in d:
      kwargs["num_labels"] = d["num_labels"]
    elif "id2label" in d:
      kwargs["num_labels"] = len(d["id2label"])
    if "jaxprune_classifier_relu" in d:
      kwargs["classifier_relu"] = bool(d["jaxprune_classifier_relu"])
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"position_embedding_type {pos!r}: only 'absolute' is supported")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown BertConfig fields {sorted(unknown)}")
    return cls(**{**kwargs, **overrides})

  def to_hf_dict(self) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict for ``BertForSequenceClassification``."""
    d = {k: getattr(self, k) for k in _HF_FIELDS}
    d.update(
        model_type="bert",
        architectures=["BertForSequenceClassification"],
        position_embedding_type="absolute",
        num_labels=self.num_labels,
        id2label={str(i): f"LABEL_{i}" for i in range(self.num_labels)},
        label2id={f"LABEL_{i}": i for i in range(self.num_labels)},
        problem_type=("regression" if self.num_labels == 1
                      else "single_label_classification"),
    )
    if self.classifier_relu:
      # transformers ignores this key; it records that logits were computed with ReLU.
      d["jaxprune_classifier_relu"] = True
    return d


@flax.struct.dataclass
class BertOutput:
  """What a BERT forward pass returns.

  ``hidden_states``: (embedding output, layer 1 output, ..., layer L output), each
  (batch, len, hidden), when asked for. ``attention_scores``: one (batch, heads, len, len)
  array per layer, pre-softmax, scaled by 1/sqrt(head_dim), with ``MASK_VALUE`` added at
  padded keys, when asked for. ``logits``: (batch, num_labels), or None for a bare
  encoder.
  """
  last_hidden_state: jax.Array
  pooled: jax.Array | None = None
  logits: jax.Array | None = None
  hidden_states: tuple[jax.Array, ...] | None = None
  attention_scores: tuple[jax.Array, ...] | None = None


def _init(config: BertConfig, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def _constant(init, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(init, axes)


def _dense(config: BertConfig, features: int, axes: tuple[str, str], name: str) -> nn.Dense:
  """A Dense layer whose kernel has logical axes ``axes`` = (in, out), bias (out,)."""
  return nn.Dense(features, dtype=config.dtype, param_dtype=config.param_dtype,
                  kernel_init=_init(config, axes),
                  bias_init=_constant(nn.initializers.zeros_init(), axes[1:]), name=name)


def _layer_norm(config: BertConfig) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype,
                      param_dtype=config.param_dtype,
                      scale_init=_constant(nn.initializers.ones_init(), ("embed",)),
                      bias_init=_constant(nn.initializers.zeros_init(), ("embed",)),
                      name="LayerNorm")


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool):
    c = self.config

    def embed(num, axes, name):
      return nn.Embed(num, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
                      embedding_init=_init(c, axes), name=name)

    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = (embed(c.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
         + embed(c.max_position_embeddings, ("positions", "embed"),
                 "position_embeddings")(positions)
         + embed(c.type_vocab_size, ("positions", "embed"),
                 "token_type_embeddings")(token_type_ids))
    x = _layer_norm(c)(x)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
  """Multi-head attention; returns the context and the masked, scaled scores."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    c = self.config
    batch, length, _ = x.shape

    def project(name):
      y = _dense(c, c.hidden_size, ("embed", "heads"), name)(x)
      return y.reshape(batch, length, c.num_attention_heads, c.head_dim)

    q, k, v = project("query"), project("key"), project("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (c.head_dim ** -0.5)
    scores = scores + mask_bias.astype(scores.dtype)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(c.dtype)
    probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return context.reshape(batch, length, c.hidden_size), scores


class BertResidualOutput(nn.Module):
  """dense -> dropout -> LayerNorm(. + residual): HF's BertSelfOutput and BertOutput."""
  config: BertConfig
  axes: tuple[str, str]

  @nn.compact
  def __call__(self, x, residual, deterministic: bool):
    c = self.config
    y = _dense(c, c.hidden_size, self.axes, "dense")(x)
    y = nn.Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
    return _layer_norm(c)(y + residual)


class BertAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    context, scores = BertSelfAttention(self.config, name="self")(x, mask_bias, deterministic)
    out = BertResidualOutput(self.config, ("heads", "embed"), name="output")(
        context, x, deterministic)
    return out, scores


class BertIntermediate(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    return _ACTIVATIONS[c.hidden_act](_dense(c, c.intermediate_size, ("embed", "mlp"), "dense")(x))


class BertLayer(nn.Module):
  """One transformer layer; returns its output and its attention scores."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    c = self.config
    x, scores = BertAttention(c, name="attention")(x, mask_bias, deterministic)
    h = BertIntermediate(c, name="intermediate")(x)
    x = BertResidualOutput(c, ("mlp", "embed"), name="output")(h, x, deterministic)
    return x, scores


class BertLayerCollection(nn.Module):
  """The ``encoder/layer/<i>`` stack; returns every layer's output and scores."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    outputs, scores = [], []
    for i in range(self.config.num_hidden_layers):
      x, s = BertLayer(self.config, name=str(i))(x, mask_bias, deterministic)
      outputs.append(x)
      scores.append(s)
    return outputs, scores


class BertEncoder(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    return BertLayerCollection(self.config, name="layer")(x, mask_bias, deterministic)


class BertPooler(nn.Module):
  """tanh(dense(h_[CLS]))."""
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    return nn.tanh(_dense(c, c.hidden_size, ("embed", "embed_out"), "dense")(x[:, 0]))


class BertModel(nn.Module):
  """The BERT encoder: embeddings, ``num_hidden_layers`` layers and the tanh pooler.

  ``attention_mask`` is 1 for real tokens and 0 for padding; ``token_type_ids`` default
  to zeros. Dropout needs an rng named ``"dropout"`` when ``deterministic=False``.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               deterministic: bool = True, output_hidden_states: bool = False,
               output_attention_scores: bool = False) -> BertOutput:
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, MASK_VALUE)
    x = BertEmbeddings(self.config, name="embeddings")(input_ids, token_type_ids, deterministic)
    outputs, scores = BertEncoder(self.config, name="encoder")(x, mask_bias, deterministic)
    return BertOutput(
        last_hidden_state=outputs[-1] if outputs else x,
        pooled=BertPooler(self.config, name="pooler")(outputs[-1] if outputs else x),
        hidden_states=(x, *outputs) if output_hidden_states else None,
        attention_scores=tuple(scores) if output_attention_scores else None,
    )


class BertForSequenceClassification(nn.Module):
  """BERT + dropout + a linear classifier on the pooled [CLS] state.

  ``num_labels == 1`` is a regression head (STS-B): the single logit is the score.
  With ``config.classifier_relu`` the pooled state goes through ReLU first, as in the
  SparseBERT/TinyBERT reference code.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               deterministic: bool = True, output_hidden_states: bool = False,
               output_attention_scores: bool = False) -> BertOutput:
    c = self.config
    out = BertModel(c, name="bert")(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        output_hidden_states=output_hidden_states,
        output_attention_scores=output_attention_scores)
    pooled = nn.relu(out.pooled) if c.classifier_relu else out.pooled
    pooled = nn.Dropout(c.hidden_dropout_prob)(pooled, deterministic=deterministic)
    logits = _dense(c, c.num_labels, ("embed", "labels"), "classifier")(pooled)
    return out.replace(logits=logits.astype(jnp.float32))


def _dummy_inputs(config: BertConfig, length: int = 8):
  ids = jnp.zeros((1, min(length, config.max_position_embeddings)), jnp.int32)
  return ids, jnp.ones_like(ids), jnp.zeros_like(ids)


def abstract_params(model: nn.Module) -> Any:
  """The boxed (``nn.Partitioned``) parameter shapes of ``model``, without allocating."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), *_dummy_inputs(model.config))["params"])


def init_params(model: nn.Module, rng: jax.Array, only: Sequence[str] | None = None) -> Any:
  """Fresh parameters (a plain nested dict of arrays, logical-axis boxes removed).

  Compiled as one program: run eagerly, the initialisation is a hundred-odd tiny ops
  each compiled on its own (about 3 s before any training step on a CPU).

  ``only`` keeps the parameters whose path starts with one of its prefixes, e.g.
  ``("classifier/",)``; the others are never generated (XLA drops what a program does
  not return), and the kept ones have the values a full init gives them. A checkpoint
  without a classifier needs only that head: loading MiniLM-L6 so took 10.9 CPU-s with
  a full init and takes 3.1 with this (2-core CPU), the difference mostly compiling
  random number generators.

  >>> head = init_params(model, jax.random.key(0), only=("classifier/",))
  >>> list(head)
  ['classifier']
  """
  def init(rng: jax.Array) -> Any:
    params = nn.unbox(model.init(rng, *_dummy_inputs(model.config))["params"])
    if only is None:
      return params
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if k.startswith(tuple(only))}, sep="/")

  return jax.jit(init)(rng)


def logical_axes(model: nn.Module) -> Any:
  """A tree like the params with a ``jax.sharding.PartitionSpec`` of logical axis names
  per leaf, e.g. ``PartitionSpec('embed', 'heads')`` for a query kernel."""
  return nn.get_partition_spec(abstract_params(model))
