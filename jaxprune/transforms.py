"""Gradual magnitude pruning as an optax transformation.

`prune_by_magnitude` goes last in an ``optax.chain``, after any optimizer. It holds the
masks in its state and rewrites the updates so that every pruned weight is exactly zero
after ``optax.apply_updates`` (``u' = where(mask, u, -p)``, the same shape as
``optax.keep_params_nonnegative``): there is no second call to remember. On mask events
it first recomputes the masks from the post-update weights ``p + u``, as SparseBERT
does after its optimizer step. Gradients and optimizer moments are left alone (the
reference does not mask them either).
"""

from __future__ import annotations

from collections.abc import Iterable
import functools
from typing import Any, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import masks as masks_lib
from jaxprune import schedules

PyTree = Any


class PruneByMagnitudeState(NamedTuple):
  """State of `prune_by_magnitude`.

  Attributes:
    count: int32, number of updates done (the 1-based step of the last update).
    masks: bool tree shaped like the params; all-True for non-prunable leaves.
  """
  count: jax.Array
  masks: PyTree


class _Plan(NamedTuple):
  """Static, per-params-structure facts: prunable leaf indices and the keep-table key."""
  prunable: tuple[int, ...]
  units: Optional[tuple[int, ...]]  # units per ranking group; None: no events to run


def prune_by_magnitude(sparsity: schedules.ScheduleLike,
                       where: masks_lib.Where = None, *, scope: str = "per_matrix",
                       ties: str = "exact", pattern: masks_lib.Pattern = None,
                       events: Optional[Iterable[int]] = None
                       ) -> optax.GradientTransformation:
  """Prunes the smallest-magnitude weights on a schedule; use last in a chain.

  On every update ``t`` (1-based): if ``t`` is a mask event, the masks become
  ``magnitude_masks(p + u, schedule.sparsity(t), where, old_masks)``; then the updates
  become ``where(mask, u, -p)`` so that pruned weights are exactly 0 afterwards.
  Non-prunable leaves pass through untouched. ``init`` treats weights that are already
  zero in prunable leaves as pruned, so starting from a sparse checkpoint fine-tunes it
  sparsely.

  Keep counts are tabulated on the host in float64 for every (event, leaf) when the
  update is traced; in the graph the step only indexes that table and a ``lax.cond``
  runs the (sort-free, radix-select) mask computation on event steps, so a jitted
  train step compiles once.

  The ``lax.cond`` has a price on CPU: its event branch reads ``p + u``, so XLA must
  materialise the whole update tree on every step instead of fusing the optimizer into
  ``apply_updates`` (+19% of a BERT-base step on a 2-core CPU). A train loop that knows
  its step on the host can skip it: ``opt.update(g, state, params, prune_event=flag)``
  with ``flag = schedule.is_event(step)`` (``step`` = this update's 1-based count, a
  Python bool, so ``jax.jit(..., static_argnames="prune_event")`` compiles one variant
  for events and one for the other steps). ``optax.chain`` forwards the argument.
  ``prune_event=True`` on a non-event step changes nothing; ``prune_event=False`` on an
  event step skips that event, so pass the schedule's answer, not a guess.

  SparseBERT's reference behaviour is
  ``prune_by_magnitude(cubic_sparsity(s, total_steps, reference=True),
  where=BERT_ENCODER_MATRICES, ties="keep")``.

  Args:
    sparsity: a float (prune once at step 1), a `jaxprune.schedules.SparsitySchedule`
      (e.g. `cubic_sparsity`), or a ``step -> sparsity`` callable (with ``events``).
    where: which leaves are prunable (see `jaxprune.masks`); default: floating leaves
      with ``ndim >= 2``.
    scope: ``"per_matrix"`` (reference) or ``"global"`` ranking.
    ties: ``"exact"`` (exactly k kept, ties by index) or ``"keep"`` (reference).
    pattern: ``None``, ``NM(n, m)`` or ``Blocks(rows, cols)``.
    events: 1-based event steps, only with a callable ``sparsity``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    `PruneByMagnitudeState`; its ``update`` takes the optional keyword
    ``prune_event`` (None: decided in the graph; True/False: told statically).

  Example:
    >>> import optax
    >>> from jaxprune import cubic_sparsity
    >>> opt = optax.chain(optax.adamw(1e-3),
    ...                   prune_by_magnitude(cubic_sparsity(0.9, total_steps=1000)))
  """
  masks_lib.check_options(scope=scope, ties=ties, pattern=pattern)
  schedule = schedules.as_schedule(sparsity, events)
  event_steps = np.asarray(schedule.event_steps, np.int32)
  event_sparsity = [float(schedule.sparsity(int(t))) for t in schedule.event_steps]
  for t, s in zip(schedule.event_steps, event_sparsity):
    if not 0.0 <= s <= 1.0:
      raise ValueError(f"scheduled sparsity at step {t} is {s}, outside [0, 1]")
  tables: dict[tuple[int, ...], np.ndarray] = {}

  def plan(params) -> _Plan:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    flags = jax.tree.leaves(masks_lib.prunable_tree(params, where))
    prunable = tuple(i for i, f in enumerate(flags) if f)
    units = tuple(masks_lib.group_units(
        [masks_lib.path_str(flat[i][0]) for i in prunable],
        [np.shape(flat[i][1]) for i in prunable], pattern, scope))
    if not prunable or not len(event_steps):
      return _Plan(prunable, None)
    if units not in tables:  # Host, float64: exact counts, once per params structure.
      tables[units] = np.array(
          [masks_lib.group_keep_counts(units, s, pattern, schedule.rounding)
           for s in event_sparsity], np.int32).T
    return _Plan(prunable, units)

  def init_fn(params):
    prunable = set(plan(params).prunable)
    leaves, treedef = jax.tree.flatten(params)
    masks = [(p != 0) if i in prunable else jnp.ones(jnp.shape(p), bool)
             for i, p in enumerate(leaves)]
    return PruneByMagnitudeState(jnp.zeros([], jnp.int32), treedef.unflatten(masks))

  # Jitted so that eager (un-jitted) use compiles it once instead of op by op; inlined
  # into the caller's computation under jit.
  @functools.partial(jax.jit, static_argnames=("units", "event"))
  def prunable_updates(count, ps, us, masks, units, event):
    if units is not None and event is not False:
      steps = jnp.asarray(event_steps)
      e = jnp.minimum(jnp.sum(steps < count), len(event_steps) - 1)
      is_event = steps[e] == count
      ks = jnp.asarray(tables[units])[:, e]
      new = lambda ps, us: [(p + u).astype(p.dtype) for p, u in zip(ps, us)]

      def recompute(operands):
        # Keys (|p + u| of surviving weights), thresholds and masks all come from one
        # evaluation of p + u inside this branch, so exactly k weights survive (computed
        # twice, XLA may round p + u differently and keep k - 1); non-event steps only
        # pass the masks through.
        ps, us, old = operands
        if pattern is not None:
          return masks_lib.compute_masks(new(ps, us), old, ks, pattern=pattern,
                                         scope=scope, ties=ties)
        keys = masks_lib.unstructured_keys(new(ps, us), old)
        thrs, cuts = masks_lib.unit_thresholds(keys, ks, scope, ties)
        return [masks_lib.select_units(k, t, c) & m
                for k, t, c, m in zip(keys, thrs, cuts, old)]

      if event is None:
        masks = lax.cond(is_event, recompute, lambda operands: list(operands[2]),
                         (ps, us, masks))
      else:  # Told statically; still a no-op unless ``count`` really is an event.
        masks = [jnp.where(is_event, n, m) for n, m in zip(recompute((ps, us, masks)), masks)]
    updates = [jnp.where(m, u, -p.astype(u.dtype)) for p, u, m in zip(ps, us, masks)]
    return updates, masks

  def update_fn(updates, state, params=None, *, prune_event: Optional[bool] = None,
                **extra_args):
    del extra_args  # Other transforms' extra arguments (optax.chain passes them all).
    if prune_event is not None:
      if not isinstance(prune_event, (bool, np.bool_)):
        raise TypeError(f"prune_event must be None or a Python bool (static under jit), "
                        f"got {type(prune_event).__name__}")
      prune_event = bool(prune_event)
    if params is None:
      raise ValueError("prune_by_magnitude needs the current params to keep pruned "
                       "weights at zero: call `opt.update(updates, state, params)`.")
    p_plan = plan(params)
    count = optax.safe_increment(state.count)
    ps, treedef = jax.tree.flatten(params)
    us = treedef.flatten_up_to(updates)
    ms = treedef.flatten_up_to(state.masks)
    idx = p_plan.prunable
    new_us, new_ms = list(us), list(ms)
    if idx:
      with jax.named_scope("prune_by_magnitude"):  # labels its ops in profiles
        sub_us, sub_ms = prunable_updates(count, [ps[i] for i in idx], [us[i] for i in idx],
                                          [ms[i] for i in idx], units=p_plan.units,
                                          event=prune_event)
      for i, u, m in zip(idx, sub_us, sub_ms):
        new_us[i], new_ms[i] = u, m
    return (treedef.unflatten(new_us),
            PruneByMagnitudeState(count, treedef.unflatten(new_ms)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_masks(opt_state: Any) -> PyTree:
  """The masks of the (single) `prune_by_magnitude` inside any optimizer state.

  Works through ``optax.chain``, ``named_chain``, ``inject_hyperparams``,
  ``MultiSteps``, ``masked`` and any other pytree nesting of states.

  Args:
    opt_state: an optimizer state (or any pytree holding one).

  Returns:
    The bool mask tree.

  Raises:
    ValueError: if there is no, or more than one, `PruneByMagnitudeState`.

  Example:
    >>> import optax
    >>> opt = optax.chain(optax.sgd(0.1), prune_by_magnitude(0.5))
    >>> state = opt.init({"w": jnp.ones((2, 2))})
    >>> find_masks(state)["w"].shape
    (2, 2)
  """
  is_state = lambda x: isinstance(x, PruneByMagnitudeState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  if len(found) != 1:
    raise ValueError(f"expected exactly one PruneByMagnitudeState in the optimizer state, "
                     f"found {len(found)}")
  return found[0].masks
