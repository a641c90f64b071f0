"""jaxprune: SparseBERT in JAX.

The top-level package is the functional core and imports only jax, numpy and optax:
masks, sparsity schedules, optax pruning transforms and distillation losses. The Flax
BERT (``jaxprune.models``), data (``jaxprune.data``) and trainer (``jaxprune.trainer``)
are imported explicitly by those who need them.
"""

from jaxprune.distill import KDWeights
from jaxprune.distill import attention_mse
from jaxprune.distill import distillation_loss
from jaxprune.distill import group_heads
from jaxprune.distill import hidden_mse
from jaxprune.distill import init_hidden_map
from jaxprune.distill import kl_divergence
from jaxprune.distill import label_cross_entropy
from jaxprune.distill import layer_map
from jaxprune.distill import regression_mse
from jaxprune.distill import soft_cross_entropy
from jaxprune.distill import split_params
from jaxprune.masks import BERT_ENCODER_MATRICES
from jaxprune.masks import Blocks
from jaxprune.masks import LeafSparsity
from jaxprune.masks import NM
from jaxprune.masks import SparsityReport
from jaxprune.masks import apply_masks
from jaxprune.masks import keep_count
from jaxprune.masks import magnitude_masks
from jaxprune.masks import prunable_tree
from jaxprune.masks import select
from jaxprune.masks import sparsity_report
from jaxprune.optim import adamw_warmup_linear
from jaxprune.optim import bert_adam
from jaxprune.optim import clip_by_norm_per_tensor
from jaxprune.optim import default_weight_decay_mask
from jaxprune.optim import scale_by_bert_adam
from jaxprune.optim import warmup_linear_schedule
from jaxprune.schedules import SparsitySchedule
from jaxprune.schedules import as_schedule
from jaxprune.schedules import constant_sparsity
from jaxprune.schedules import cubic_sparsity
from jaxprune.schedules import from_fn
from jaxprune.schedules import one_shot
from jaxprune.transforms import PruneByMagnitudeState
from jaxprune.transforms import find_masks
from jaxprune.transforms import prune_by_magnitude

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BERT_ENCODER_MATRICES",
    "Blocks",
    "KDWeights",
    "LeafSparsity",
    "NM",
    "PruneByMagnitudeState",
    "SparsityReport",
    "SparsitySchedule",
    "adamw_warmup_linear",
    "apply_masks",
    "as_schedule",
    "attention_mse",
    "bert_adam",
    "clip_by_norm_per_tensor",
    "constant_sparsity",
    "cubic_sparsity",
    "default_weight_decay_mask",
    "distillation_loss",
    "find_masks",
    "from_fn",
    "group_heads",
    "hidden_mse",
    "init_hidden_map",
    "keep_count",
    "kl_divergence",
    "label_cross_entropy",
    "layer_map",
    "magnitude_masks",
    "one_shot",
    "prunable_tree",
    "prune_by_magnitude",
    "regression_mse",
    "scale_by_bert_adam",
    "select",
    "soft_cross_entropy",
    "sparsity_report",
    "split_params",
    "warmup_linear_schedule",
]
