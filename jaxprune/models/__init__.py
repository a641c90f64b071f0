"""Flax BERT and Hugging Face checkpoint import/export (needs flax and transformers).

Example::

  from jaxprune import models
  model, params, config = models.from_pretrained("minilm-l6", num_labels=2)
  tokenizer = models.load_tokenizer("minilm-l6")
  small, small_config = models.shrink(params, config, layers=3, heads=6)
"""

from jaxprune.models.bert import BertConfig
from jaxprune.models.bert import BertForSequenceClassification
from jaxprune.models.bert import BertModel
from jaxprune.models.bert import BertOutput
from jaxprune.models.bert import init_params
from jaxprune.models.bert import logical_axes
from jaxprune.models.convert import CheckpointError
from jaxprune.models.convert import export_hf
from jaxprune.models.convert import from_config
from jaxprune.models.convert import from_pretrained
from jaxprune.models.hub import ModelNotFoundError
from jaxprune.models.hub import load_encoding_tokenizer
from jaxprune.models.hub import load_tokenizer
from jaxprune.models.hub import resolve
from jaxprune.models.hub import run_model_dir
from jaxprune.models.shrink import ShrinkPlan
from jaxprune.models.shrink import apply_plan
from jaxprune.models.shrink import encoder_weight_count
from jaxprune.models.shrink import magnitude_scores
from jaxprune.models.shrink import plan_shrink
from jaxprune.models.shrink import shrink
from jaxprune.models.shrink import taylor_scores
from jaxprune.models.shrink import uniform_layers

__all__ = [
    "BertConfig",
    "BertForSequenceClassification",
    "BertModel",
    "BertOutput",
    "CheckpointError",
    "ModelNotFoundError",
    "ShrinkPlan",
    "apply_plan",
    "encoder_weight_count",
    "export_hf",
    "from_config",
    "from_pretrained",
    "init_params",
    "load_encoding_tokenizer",
    "load_tokenizer",
    "logical_axes",
    "magnitude_scores",
    "plan_shrink",
    "resolve",
    "run_model_dir",
    "shrink",
    "taylor_scores",
    "uniform_layers",
]
