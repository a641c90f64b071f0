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

``PreemptionGuard`` turns SIGTERM/SIGINT (a spot or maintenance preemption of a TPU VM)
into a request that every process sees at the same step, so the loop can save and exit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxprune import paths
from jaxprune.errors import CheckpointError

__all__ = ["Checkpointer", "PreemptionGuard", "Preempted", "PREEMPTED_EXIT_CODE", "abstract"]

# The exit code of a run stopped by a preemption signal after saving (EX_TEMPFAIL: "try
# again"); re-running the same command resumes it.
PREEMPTED_EXIT_CODE = 75

# Orbax saves a replicated array "replica-parallel": each replica writes one slice, so
# that the hosts of a pod share the writing. Every slice is an eager device op (~0.3 ms
# on a CPU host), which for small arrays costs more than it saves: 0.2 s of each save of
# the tiny test model on 4 devices, 1.5-2.5 s of its 12-step prune run. Slices smaller
# than this are not split (biases, LayerNorms); BERT-base's matrices still are, up to 9
# replicas.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's PyTree handler (what ``StandardSave`` uses: the same files) with orbax's
  own type handlers, except that jax.Arrays are split across replicas only into slices
  of at least `MIN_REPLICA_SLICE_BYTES`. A registry of its own: orbax's global one,
  which other code in the process may use, is left alone."""
  th = ocp.type_handlers
  default = th.get_type_handler(jax.Array)
  arrays = th.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
                           array_metadata_store=getattr(default, "_array_metadata_store", None))
  registry = th.create_type_handler_registry(
      *((ty, th.get_type_handler(ty)) for ty in (int, float, bytes, np.number, np.ndarray,
                                                 str)), (jax.Array, arrays))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Preempted(Exception):
  """The run saved a checkpoint and stopped on SIGTERM/SIGINT; re-run it to resume."""


class PreemptionGuard:
  """Within ``with``, SIGTERM and SIGINT only set a flag (a second one too: a save in
  progress is never interrupted by them); `requested` tells every process, at the same
  step, whether any of them got one.

  With one process the flag is read at every step (no cost). With several, agreeing
  takes a collective, which would make the host wait for the device at every step: it
  runs only every ``check_every`` steps, so a signal is acted on up to
  ``check_every - 1`` steps late (a TPU spot VM has 30 s). JAX's own preemption sync
  point (``multihost_utils.reached_preemption_sync_point``, which the coordination
  service raises without a per-step collective, also for TPU maintenance events) is
  consulted at every step when the distributed runtime provides it.

  Example::

    with PreemptionGuard(check_every=10) as guard:
      for step in ...:
        ...
        if guard.requested(step):  # every process calls it at every step
          save(step); raise Preempted(...)
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, check_every: int = 10):
    if check_every < 1:
      raise ValueError(f"check_every={check_every}: expected >= 1")
    self.check_every = check_every
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}
    self._sync_point = jax.process_count() > 1

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal is None:
      log.warning("got signal %d: saving at the next agreed step, then stopping", signum)
    self.signal = signum

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)

  def requested(self, step: int) -> bool:
    """Whether any process got a signal; the same answer on every process at ``step``
    (a collective every ``check_every`` steps when there are several processes)."""
    local = self.signal is not None
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    if self._sync_point:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal = self.signal or signal.SIGTERM
          return True
      except RuntimeError:  # no preemption service in this runtime
        self._sync_point = False
    if step % self.check_every:
      return False
    return bool(np.max(multihost_utils.process_allgather(np.int32(local))))

log = logging.getLogger(__name__)


def _agreed(steps: list[int]) -> list[int]:
  """Process 0's list of steps, on every process (one listing decides for all)."""
  if jax.process_count() == 1:
    return steps
  from jax.experimental import multihost_utils
  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
  if not count:
    return []
  padded = np.full(count, -1, np.int32)
  padded[:min(count, len(steps))] = steps[:count]
  return [int(s) for s in multihost_utils.broadcast_one_to_all(padded)]


def _all_processes(flag: bool) -> list[bool]:
  """``flag`` of every process, in process order (a collective when there are several)."""
  if jax.process_count() == 1:
    return [flag]
  from jax.experimental import multihost_utils
  return [bool(f) for f in np.asarray(multihost_utils.process_allgather(np.int32(flag)))]


def abstract(tree: Any) -> Any:
  """``ShapeDtypeStruct``s (with shardings) of a state, the target of a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of a run under ``directory``.

  Saves of different Checkpointers never overlap (a save first waits for the others'):
  on several processes orbax's async saves agree through barriers whose names would
  collide.
  """

  _open: "weakref.WeakSet[Checkpointer]" = weakref.WeakSet()

  def __init__(self, directory: str | os.PathLike, keep: int = 2, async_save: bool = True):
    self.directory = paths.path(directory)
    if not paths.is_remote(directory):  # orbax wants absolute local paths
      self.directory = self.directory.absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_handlers={"state": _state_handler(), "meta": ocp.JsonCheckpointHandler()})
    Checkpointer._open.add(self)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> None:
    """Saves asynchronously; the previous save is finished first.

    A checkpoint already at ``step`` (left by a run killed before it recorded it
    elsewhere) is replaced.
    """
    for ckpt in list(Checkpointer._open):  # this one's own last save too
      ckpt.wait()
    if step in self._manager.all_steps():
      self._manager.delete(step)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` into the structure, dtypes and shardings of ``target``.

    Reads through orbax's handlers, without the barrier that ``CheckpointManager.restore``
    ends with: a process whose read fails would leave the others waiting in it, so
    `restore_latest` agrees on success with its own collective instead.
    """
    path = self.directory / str(step)
    if step not in self._manager.all_steps():  # lists complete (finalized) steps only
      raise FileNotFoundError(f"{path}: no complete checkpoint")
    handler = ocp.CompositeCheckpointHandler(state=ocp.StandardCheckpointHandler(),
                                             meta=ocp.JsonCheckpointHandler())
    try:
      restored = handler.restore(path, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    finally:
      handler.close()
    return restored.state, restored.meta

  def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint that every process can read, or None when there is none.

    A checkpoint that fails to restore (truncated or corrupted files, or a transient
    read error) is skipped with a warning and the previous one is tried. With several
    processes the decision is taken together: they try the steps process 0 lists, and
    move on from a step unless all of them read it, so they never resume from different
    steps. When there are checkpoints but none can be restored (all corrupted, or saved
    by a run with another model or optimizer), it raises ``CheckpointError`` rather
    than start afresh over them.
    """
    first_error = None
    for step in reversed(_agreed(self.steps())):
      try:
        restored, error = self.restore(step, target), None
      except Exception as e:  # orbax raises many types for unreadable files
        restored, error = None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
      failed = _all_processes(error is not None)
      if not any(failed):
        return restored
      first_error = first_error or (step, error or "unreadable on another process")
      where = ("" if jax.process_count() == 1 else
               f" on process(es) {[i for i, f in enumerate(failed) if f]}")
      log.warning("checkpoint %s/%d is unreadable%s (%s); trying the previous one",
                  self.directory, step, where, error or "readable here")
    if first_error is not None:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be restored into this run (step "
          f"{first_error[0]}: {first_error[1]}); it was written by another configuration "
          "or is corrupted: use a new --workdir or remove that folder")
    return None

  def wait(self) -> None:
    """Waits for the last save to be written.

    A save whose background commit failed (a write error, or orbax's commit timeout:
    20 minutes, which a process paused meanwhile also runs into) is not kept: a warning
    says so and the run goes on, where orbax would raise the error at the next save and
    end a run that can still checkpoint. Restores only ever see complete steps.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # orbax re-raises the background thread's error, whatever it is
      message = (str(e).splitlines() or [""])[0][:200]
      log.warning("checkpoint in %s: a save failed in the background and is not kept "
                  "(%s: %s); training goes on", self.directory, type(e).__name__, message)

  def close(self) -> None:
    Checkpointer._open.discard(self)
    self.wait()
    self._manager.close()
