"""Atomic, resumable checkpoints of a training run with orbax.

A checkpoint holds the whole train state (params, optimizer state with the masks inside,
step, rng) plus a JSON ``meta`` item (data-iterator position, the config, scores), so a
run restarted with the same work directory continues exactly where the last checkpoint
left it. Orbax writes each step into a temporary folder and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact; ``restore_latest`` also
falls back to the previous step when the latest cannot be read.

Example::

  ckpt = Checkpointer(workdir / "checkpoints", keep=2)
  ckpt.save(step, state, {"data": it.state(), "config": config.to_dict()})
  restored = ckpt.restore_latest(abstract_state)   # None on a fresh run
  if restored: state, meta = restored
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxprune.errors import CheckpointError

__all__ = ["Checkpointer", "abstract"]

log = logging.getLogger(__name__)


def abstract(tree: Any) -> Any:
  """``ShapeDtypeStruct``s (with shardings) of a state, the target of a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of a run under ``directory``."""

  def __init__(self, directory: str | os.PathLike, keep: int = 2, async_save: bool = True):
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> None:
    """Saves asynchronously; the previous save is finished first.

    A checkpoint already at ``step`` (left by a run killed before it recorded it
    elsewhere) is replaced.
    """
    if step in self._manager.all_steps():
      self._manager.wait_until_finished()
      self._manager.delete(step)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` into the structure, dtypes and shardings of ``target``."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest readable checkpoint, or None when there is none.

    A checkpoint that fails to restore (truncated or corrupted files) is skipped with a
    warning and the previous one is tried. When there are checkpoints but none can be
    restored (all corrupted, or saved by a run with another model or optimizer), it
    raises ``CheckpointError`` rather than start afresh over them.
    """
    first_error = None
    for step in reversed(self.steps()):
      try:
        return self.restore(step, target)
      except Exception as e:  # orbax raises many types for unreadable files
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        first_error = first_error or (step, reason)
        log.warning("checkpoint %s/%d is unreadable (%s); trying the previous one",
                    self.directory, step, reason)
    if first_error is not None:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be restored into this run (step "
          f"{first_error[0]}: {first_error[1]}); it was written by another configuration "
          "or is corrupted: use a new --workdir or remove that folder")
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
