"""Sparsity schedules: at which optimizer steps masks change, and to what sparsity.

A `SparsitySchedule` is a small host-side description, evaluated in float64 when a
pruning transform is built (never inside ``jit``):

* ``sparsity(t)``: the target fraction pruned by a mask event at step ``t``;
* ``event_steps``: the finite, sorted steps at which masks are recomputed;
* ``rounding``: how a fraction becomes a keep count (see `jaxprune.masks.keep_count`).

Steps are 1-based: ``t`` is the number of optimizer updates *including* the current
one, as in SparseBERT (whose counter is incremented before the check). Because
everything is known on the host, `jaxprune.transforms.prune_by_magnitude` tabulates
exact keep counts per event and per leaf and only indexes that table in the graph.

Example:
  >>> s = cubic_sparsity(0.8, total_steps=50, events=10)
  >>> s.event_steps[-1], s.sparsity(s.event_steps[-1])
  (50, 0.8)
  >>> r = cubic_sparsity(0.8, total_steps=50, events=10, reference=True)
  >>> r.event_steps[-1], round(r.sparsity(r.event_steps[-1]), 6)
  (45, 0.7992)
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import NamedTuple, Optional, Union


class SparsitySchedule(NamedTuple):
  """When masks are recomputed and to which sparsity (host-side, float64).

  Attributes:
    sparsity: ``t -> fraction pruned`` for a mask event at 1-based step ``t``.
    event_steps: sorted, unique 1-based steps at which masks are recomputed.
    rounding: ``"exact"`` or ``"reference"``, see `jaxprune.masks.keep_count`.
  """
  sparsity: Callable[[int], float]
  event_steps: tuple[int, ...]
  rounding: str = "exact"

  def is_event(self, step: int) -> bool:
    """Whether masks are recomputed after the update numbered ``step`` (1-based)."""
    i = bisect.bisect_left(self.event_steps, step)
    return i < len(self.event_steps) and self.event_steps[i] == step

  def in_effect(self, step: int) -> float:
    """Scheduled sparsity of the masks after ``step`` updates (0 before any event)."""
    i = bisect.bisect_right(self.event_steps, step)
    return float(self.sparsity(self.event_steps[i - 1])) if i else 0.0

  @property
  def final_sparsity(self) -> float:
    """Sparsity after the last event (0 if there is none)."""
    return self.in_effect(self.event_steps[-1]) if self.event_steps else 0.0


def cubic_sparsity(target: float, total_steps: int, *, events: int = 100, begin: int = 0,
                   initial: float = 0.0, reference: bool = False) -> SparsitySchedule:
  """Zhu & Gupta's cubic ramp, as SparseBERT runs it.

  ``s_t = s_f + (s_i - s_f) * (1 - k / N) ** 3`` with ``freq = round(total_steps /
  events)``, ``k = (t - begin) // freq`` and ``N = total_steps // freq``; events at
  ``t = begin + j * freq``.

  The reference only fires events strictly inside ``(begin, begin + total_steps)``,
  so when ``freq`` divides ``total_steps`` its last event has ``k = N - 1`` and stops
  short of the target (0.7992 instead of 0.8 for 50 steps and 10 events). By default
  the events run up to ``k = N`` (at most ``begin + total_steps``), so the schedule
  always ends exactly at ``target``; ``reference=True`` keeps the reference's event
  set, arithmetic and keep-count rounding bit for bit.

  Args:
    target: final sparsity ``s_f`` in [0, 1].
    total_steps: steps over which to ramp (the reference: all training steps).
    events: approximate number of mask events (the reference: 100).
    begin: step ``t0`` after which pruning starts.
    initial: initial sparsity ``s_i`` (the reference: 0).
    reference: reproduce the reference exactly, shortfall included.

  Returns:
    A `SparsitySchedule`.

  Example:
    >>> s = cubic_sparsity(0.95, total_steps=1000)
    >>> round(s.in_effect(500), 4), s.final_sparsity
    (0.8312, 0.95)
  """
  if total_steps < 1 or events < 1:
    raise ValueError(f"total_steps and events must be >= 1, got {total_steps}, {events}")
  if not (0.0 <= target <= 1.0 and 0.0 <= initial <= 1.0):
    raise ValueError(f"sparsities must be in [0, 1], got {initial} -> {target}")
  freq = round(total_steps / events)
  if reference and freq == 0:
    raise ValueError(f"reference mode: freq = round({total_steps} / {events}) = 0 "
                     "(the reference divides by it); use more steps or fewer events")
  freq = max(freq, 1)
  n = total_steps // freq
  s_f, s_i = float(target), float(initial)

  def sparsity(t: int) -> float:
    k = (t - begin) // freq
    k = min(max(k, 0), n)
    return s_f + (s_i - s_f) * (1 - k / n) ** 3

  if reference:
    steps = tuple(range(begin + freq, begin + total_steps, freq))
  else:
    steps = tuple(begin + j * freq for j in range(1, n + 1))
  return SparsitySchedule(sparsity, steps, "reference" if reference else "exact")


def constant_sparsity(sparsity: float) -> SparsitySchedule:
  """Prune to ``sparsity`` at the first update, then keep the masks fixed.

  With ``sparsity=0`` there is no event at all: the transform only keeps the weights
  that are zero at ``init`` at zero (sparse fine-tuning of a pruned checkpoint).

  Example:
    >>> constant_sparsity(0.9).event_steps
    (1,)
  """
  return one_shot(sparsity, step=1) if sparsity > 0 else SparsitySchedule(
      lambda t: 0.0, ())


def one_shot(sparsity: float, step: int = 1) -> SparsitySchedule:
  """A single mask event at ``step`` (1-based), pruning to ``sparsity``.

  Example:
    >>> s = one_shot(0.5, step=100)
    >>> s.in_effect(99), s.in_effect(100)
    (0.0, 0.5)
  """
  if step < 1:
    raise ValueError(f"step must be >= 1 (steps are 1-based), got {step}")
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
  value = float(sparsity)
  return SparsitySchedule(lambda t: value, (int(step),))


def from_fn(fn: Callable[[int], float], event_steps: Iterable[int],
            rounding: str = "exact") -> SparsitySchedule:
  """Wraps any ``step -> sparsity`` function, e.g. an optax schedule.

  ``fn`` is called on the host, once per event, with the 1-based step ``t``.

  Example:
    >>> import optax
    >>> s = from_fn(optax.linear_schedule(0.0, 0.9, 100), range(10, 101, 10))
    >>> round(s.final_sparsity, 6)
    0.9
  """
  steps = tuple(sorted({int(t) for t in event_steps}))
  if steps and steps[0] < 1:
    raise ValueError(f"event steps are 1-based, got {steps[0]}")
  return SparsitySchedule(lambda t: float(fn(t)), steps, rounding)


ScheduleLike = Union[float, SparsitySchedule, Callable[[int], float]]


def as_schedule(sparsity: ScheduleLike,
                events: Optional[Iterable[int]] = None) -> SparsitySchedule:
  """Normalises a float, a `SparsitySchedule` or a ``step -> sparsity`` callable.

  Args:
    sparsity: a constant (see `constant_sparsity`), a schedule, or a callable.
    events: the 1-based event steps; required for (and only for) a callable.

  Returns:
    A `SparsitySchedule`.

  Example:
    >>> as_schedule(0.5).event_steps
    (1,)
  """
  if isinstance(sparsity, SparsitySchedule):
    if events is not None:
      raise ValueError("`events` is only for a step -> sparsity callable; a "
                       "SparsitySchedule already has its event_steps")
    return sparsity
  if callable(sparsity):
    if events is None:
      raise ValueError("a step -> sparsity callable needs `events` (the 1-based steps at "
                       "which masks are recomputed), e.g. events=range(100, 10001, 100)")
    return from_fn(sparsity, events)
  if events is not None:
    raise ValueError("`events` is only for a step -> sparsity callable")
  return constant_sparsity(float(sparsity))
