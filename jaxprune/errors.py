"""The errors a user can fix, under one base class.

``main.py`` catches :class:`UserError` and prints its message as one line (exit code 2,
no traceback). Messages name the thing that is wrong and what was expected, without a
module prefix. Each class also derives from the builtin a caller would expect
(``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.

Example::

  try:
    validate(config, mode="prune")
  except UserError as e:
    print(f"jaxprune: error: {e}")
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError",
           "ModelNotFoundError", "ArtifactError", "PatternError"]


class UserError(Exception):
  """Base of every error caused by an input the user gave (a value, a file, a path)."""


class ConfigError(UserError, ValueError):
  """A config value out of range or inconsistent with another."""


class DataError(UserError, ValueError):
  """A data file or row that cannot be read as the task's format."""


class CheckpointError(UserError, ValueError):
  """A model or training checkpoint that is missing, truncated or does not fit."""


class ModelNotFoundError(UserError, FileNotFoundError):
  """A model name that resolves to no checkpoint directory."""


class ArtifactError(UserError, ValueError):
  """A sparse artifact that is corrupt, of another version, or inconsistent."""


class PatternError(UserError, ValueError):
  """Weights that do not follow the sparsity pattern an export needs (e.g. 2:4)."""
