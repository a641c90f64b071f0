"""jaxprune: SparseBERT in JAX.

The top-level package is the functional core and imports only jax, numpy and optax:
masks, sparsity schedules, optax pruning transforms and distillation losses. The Flax
BERT (``jaxprune.models``), data (``jaxprune.data``) and trainer (``jaxprune.trainer``)
are imported explicitly by those who need them.

The public names are loaded on first use (PEP 562), so that ``import jaxprune`` and the
pieces that need no JAX -- the TPU launcher ``jaxprune-tpu`` (``jaxprune.launch``), the
gs:// path helpers (``jaxprune.paths``) -- start without importing jax (about 1 s):
``jaxprune.prune_by_magnitude`` imports ``jaxprune.transforms`` the first time it is
read. ``from jaxprune import *`` and ``dir(jaxprune)`` see every public name.

Example::

  import jaxprune
  tx = jaxprune.prune_by_magnitude(jaxprune.cubic_sparsity(0.9, 1000))
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# Module (under jaxprune.) -> the public names it defines.
_PUBLIC = {
    "distill": ("KDWeights", "attention_kl", "attention_mse", "distillation_loss",
                "group_heads", "hidden_mse", "init_hidden_map", "kl_divergence",
                "label_cross_entropy", "layer_map", "regression_mse", "soft_cross_entropy",
                "split_params"),
    "masks": ("BERT_ENCODER_MATRICES", "Blocks", "LeafSparsity", "NM", "SparsityReport",
              "apply_masks", "keep_count", "magnitude_masks", "prunable_tree", "select",
              "sparsity_report"),
    "optim": ("adamw_warmup_linear", "bert_adam", "clip_by_norm_per_tensor",
              "default_weight_decay_mask", "scale_by_bert_adam", "warmup_linear_schedule"),
    "schedules": ("SparsitySchedule", "as_schedule", "constant_sparsity", "cubic_sparsity",
                  "from_fn", "one_shot"),
    "transforms": ("PruneByMagnitudeState", "find_masks", "prune_by_magnitude"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
  module = _WHERE.get(name)
  if module is None:
    raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"jaxprune.{module}"), name)
  globals()[name] = value  # later reads skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
