"""Flax BERT and Hugging Face checkpoint import/export (needs flax and transformers).

Example::

  from jaxprune import models
  model, params, config = models.from_pretrained("minilm-l6", num_labels=2)
  tokenizer = models.load_tokenizer("minilm-l6")
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
from jaxprune.models.hub import load_tokenizer
from jaxprune.models.hub import resolve
from jaxprune.models.hub import run_model_dir

__all__ = [
    "BertConfig",
    "BertForSequenceClassification",
    "BertModel",
    "BertOutput",
    "CheckpointError",
    "ModelNotFoundError",
    "export_hf",
    "from_config",
    "from_pretrained",
    "init_params",
    "load_tokenizer",
    "logical_axes",
    "resolve",
    "run_model_dir",
]
