"""Flax BERT and Hugging Face checkpoint import/export (needs flax and transformers)."""

from jaxprune.models.hub import ModelNotFoundError
from jaxprune.models.hub import load_tokenizer
from jaxprune.models.hub import resolve

__all__ = [
    "ModelNotFoundError",
    "load_tokenizer",
    "resolve",
]
