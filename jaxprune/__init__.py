"""jaxprune: SparseBERT in JAX.

The top-level package is the functional core and imports only jax, numpy and optax:
masks, sparsity schedules, optax pruning transforms and distillation losses. The Flax
BERT (``jaxprune.models``), data (``jaxprune.data``) and trainer (``jaxprune.train``)
are imported explicitly by those who need them.
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
]
