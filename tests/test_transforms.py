"""prune_by_magnitude: exact zeros, schedules, jit, optax interop; find_masks; optimizers."""

import functools

from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import BERT_ENCODER_MATRICES
from jaxprune import Blocks
from jaxprune import NM
from jaxprune import PruneByMagnitudeState
from jaxprune import adamw_warmup_linear
from jaxprune import bert_adam
from jaxprune import constant_sparsity
from jaxprune import cubic_sparsity
from jaxprune import default_weight_decay_mask
from jaxprune import find_masks
from jaxprune import keep_count
from jaxprune import one_shot
from jaxprune import prune_by_magnitude

WHERE = r"kernel$"
OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "adamw": lambda: optax.adamw(0.05),
    "bert_adam": lambda: bert_adam(0.05),
}


def make_params(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  normal = lambda *s: jnp.asarray(rng.normal(size=s), dtype)
  return {"dense": {"kernel": normal(8, 6), "bias": normal(6)},
          "LayerNorm": {"scale": normal(6)},
          "out": {"kernel": normal(6, 4)}}


def grad_seq(params, n, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
          for _ in range(n)]


def make_step(opt, jit=True):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step) if jit else step


@functools.cache
def plain_step(name):
  return make_step(OPTIMIZERS[name]())


def is_kernel(path):
  return path[-1].key == "kernel"


def test_hand_computed_one_shot():
  params = {"w": jnp.array([[1.0, -2.0], [3.0, -4.0]])}
  opt = optax.chain(optax.sgd(1.0), prune_by_magnitude(one_shot(0.5, step=2)))
  state = opt.init(params)
  step = make_step(opt)
  grads = {"w": jnp.array([[0.5, 0.0], [0.0, 0.5]])}
  params, state = step(params, state, grads)  # step 1: no event, plain SGD
  np.testing.assert_array_equal(params["w"], np.float32([[0.5, -2.0], [3.0, -4.5]]))
  params, state = step(params, state, grads)  # step 2: keep the 2 largest of p + u
  np.testing.assert_array_equal(params["w"], np.float32([[0.0, 0.0], [3.0, -5.0]]))
  np.testing.assert_array_equal(find_masks(state)["w"], [[False, False], [True, True]])
  params, state = step(params, state, {"w": jnp.ones((2, 2))})  # masks stay
  np.testing.assert_array_equal(params["w"], np.float32([[0.0, 0.0], [2.0, -6.0]]))
  assert int(state[1].count) == 3


@settings(max_examples=2, deadline=None)
@given(total=st.integers(1, 30), events=st.integers(1, 12),
       target=st.sampled_from([0.5, 0.7, 0.9, 0.95]), opt_name=st.sampled_from(sorted(OPTIMIZERS)))
@example(total=30, events=12, target=0.95, opt_name="adamw")  # every optimizer, always
@example(total=17, events=5, target=0.9, opt_name="sgd")
@example(total=9, events=9, target=0.7, opt_name="momentum")
@example(total=50, events=10, target=0.8, opt_name="bert_adam")  # the 0.7992 case
def test_exact_target_zeros_monotone_untouched(total, events, target, opt_name):
  params = plain = make_params()
  schedule = cubic_sparsity(target, total, events=events)
  opt = optax.chain(OPTIMIZERS[opt_name](), prune_by_magnitude(schedule, WHERE))
  step, state = make_step(opt), opt.init(params)
  plain_state = OPTIMIZERS[opt_name]().init(plain)
  masks = find_masks(state)
  for t, grads in enumerate(grad_seq(params, total + 2), start=1):
    params, state = step(params, state, grads)
    plain, plain_state = plain_step(opt_name)(plain, plain_state, grads)
    new_masks = find_masks(state)
    for path, p in jax.tree_util.tree_leaves_with_path(params):
      m = functools.reduce(lambda t, k: t[k.key], path, new_masks)
      old = functools.reduce(lambda t, k: t[k.key], path, masks)
      assert not np.asarray(m & ~old).any(), f"mask grew at step {t}"
      assert (np.asarray(p)[~np.asarray(m)] == 0).all(), f"pruned weight nonzero at {t}"
      if not is_kernel(path):  # non-prunable: bit-identical to the plain optimizer
        q = functools.reduce(lambda t, k: t[k.key], path, plain)
        np.testing.assert_array_equal(p, q)
        assert np.asarray(m).all()
    masks = new_masks
  for name in ("dense", "out"):
    w = np.asarray(params[name]["kernel"])
    assert np.count_nonzero(w) == keep_count(w.size, target), (name, schedule)


def test_jit_and_no_jit_identical():
  # SGD's updates round the same way eagerly and fused, so any difference would come
  # from the pruning transform (events, keep counts, ties).
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32),
            "b": jnp.ones(5)}
  opt = optax.chain(optax.sgd(0.05), prune_by_magnitude(cubic_sparsity(0.8, 4, events=2)))
  results = []
  for jit in (True, False):
    p, state, step = params, opt.init(params), make_step(opt, jit=jit)
    for grads in grad_seq(params, 4):
      p, state = step(p, state, grads)
    results.append((p, find_masks(state)))
  jax.tree.map(np.testing.assert_array_equal, results[0], results[1])
  assert np.count_nonzero(results[0][0]["w"]) == keep_count(30, 0.8)


def test_no_recompilation_after_step_1():
  traces = []
  params = make_params()
  opt = optax.chain(optax.adamw(0.01), prune_by_magnitude(cubic_sparsity(0.9, 8, events=4),
                                                          WHERE))

  @jax.jit
  def step(params, state, grads):
    traces.append(1)  # Python side effect: runs once per trace
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for grads in grad_seq(params, 10):  # events at 2, 4, 6, 8 and non-events
    params, state = step(params, state, grads)
  assert len(traces) == 1 and step._cache_size() == 1
  assert np.count_nonzero(params["dense"]["kernel"]) == keep_count(48, 0.9)


@pytest.mark.parametrize("opt_name", ["sgd", "adamw", "bert_adam"])
def test_static_prune_event_matches_the_in_graph_decision(opt_name):
  # The trainer's fast path: the host passes schedule.is_event(t) as a static argument
  # (two compiled variants) instead of the lax.cond; same masks at every step, same
  # params up to the rounding of a fused vs. materialised update.
  schedule = cubic_sparsity(0.9, 12, events=5)
  opt = optax.chain(OPTIMIZERS[opt_name](), prune_by_magnitude(schedule, WHERE))

  @functools.partial(jax.jit, static_argnames="prune_event")
  def step(params, state, grads, prune_event=None):
    updates, state = opt.update(grads, state, params, prune_event=prune_event)
    return optax.apply_updates(params, updates), state

  params = make_params()
  a = b = (params, opt.init(params))
  for t, grads in enumerate(grad_seq(params, 15), start=1):
    a = step(*a, grads)
    b = step(*b, grads, prune_event=schedule.is_event(t))
    jax.tree.map(np.testing.assert_array_equal, find_masks(a[1]), find_masks(b[1]))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
                 a[0], b[0])
  assert step._cache_size() == 3  # None, True, False
  assert np.count_nonzero(b[0]["dense"]["kernel"]) == keep_count(48, 0.9)


def test_static_prune_event_on_the_wrong_step():
  params = make_params()
  schedule = cubic_sparsity(0.5, 4, events=2)
  assert list(schedule.event_steps) == [2, 4]
  opt = optax.chain(optax.sgd(0.1), prune_by_magnitude(schedule, WHERE))
  grads = grad_seq(params, 2)
  state = opt.init(params)
  _, state1 = opt.update(grads[0], state, params, prune_event=True)  # step 1: no event
  assert all(bool(m.all()) for m in jax.tree.leaves(find_masks(state1)))
  _, state2 = opt.update(grads[1], state1, params, prune_event=False)  # step 2: skipped
  assert all(bool(m.all()) for m in jax.tree.leaves(find_masks(state2)))
  _, state2 = opt.update(grads[1], state1, params, prune_event=True)
  kept = keep_count(48, schedule.sparsity(2))
  assert 0 < kept < 48
  assert np.count_nonzero(find_masks(state2)["dense"]["kernel"]) == kept
  with pytest.raises(TypeError, match="prune_event must be None or a Python bool"):
    opt.update(grads[1], state1, params, prune_event=jnp.array(True))


def test_update_without_params_raises():
  opt = prune_by_magnitude(0.5)
  params = make_params()
  with pytest.raises(ValueError, match="needs the current params"):
    opt.update(params, opt.init(params))


def test_find_masks_nested_states():
  params = make_params()
  prune = lambda: prune_by_magnitude(0.5, WHERE)
  states = [
      optax.chain(optax.adam(1e-3), prune()).init(params),
      optax.named_chain(("adam", optax.adam(1e-3)), ("prune", prune())).init(params),
      optax.MultiSteps(optax.chain(optax.adam(1e-3), prune()), 2).init(params),
      optax.inject_hyperparams(lambda learning_rate: optax.chain(
          optax.adam(learning_rate), prune()))(learning_rate=1e-3).init(params),
  ]
  for state in states:
    masks = find_masks(state)
    assert jax.tree.structure(masks) == jax.tree.structure(params)
  with pytest.raises(ValueError, match="found 0"):
    find_masks(optax.adam(1e-3).init(params))
  with pytest.raises(ValueError, match="found 2"):
    find_masks(optax.chain(prune(), prune()).init(params))


def test_multisteps():
  params = make_params()
  inner = optax.chain(optax.adamw(0.05), prune_by_magnitude(cubic_sparsity(0.75, 4, events=2),
                                                            WHERE))
  opt = optax.MultiSteps(inner, every_k_schedule=2)
  step, state = make_step(opt), opt.init(params)
  for grads in grad_seq(params, 8):  # 4 inner updates: events at inner steps 2 and 4
    params, state = step(params, state, grads)
    m = find_masks(state)["dense"]["kernel"]
    assert (np.asarray(params["dense"]["kernel"])[~np.asarray(m)] == 0).all()
  assert np.count_nonzero(params["dense"]["kernel"]) == keep_count(48, 0.75)
  assert np.count_nonzero(params["out"]["kernel"]) == keep_count(24, 0.75)


def test_inject_hyperparams():
  params = make_params()
  make = lambda learning_rate: optax.chain(
      optax.adamw(learning_rate), prune_by_magnitude(one_shot(0.5, 2), WHERE))
  opt = optax.inject_hyperparams(make)(learning_rate=0.01)
  step, state = make_step(opt), opt.init(params)
  for grads in grad_seq(params, 3):
    params, state = step(params, state, grads)
  state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
  frozen = params
  params, state = step(params, state, grad_seq(params, 1, seed=5)[0])
  jax.tree.map(np.testing.assert_array_equal, params, frozen)  # lr 0: nothing moves
  assert np.count_nonzero(params["dense"]["kernel"]) == 24


def test_bf16_dtypes_kept():
  params = make_params(dtype=jnp.bfloat16)
  opt = optax.chain(optax.adamw(0.05), prune_by_magnitude(cubic_sparsity(0.9, 4, events=2),
                                                          WHERE))
  state = opt.init(params)
  updates, _ = jax.eval_shape(opt.update, grad_seq(params, 1)[0], state, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  step = make_step(opt)
  for grads in grad_seq(params, 5):
    params, state = step(params, state, grads)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
  prune_state = state[1]
  assert prune_state.count.dtype == jnp.int32
  assert all(m.dtype == jnp.bool_ for m in jax.tree.leaves(prune_state.masks))
  w = np.asarray(params["dense"]["kernel"], np.float32)
  assert np.count_nonzero(w) == keep_count(48, 0.9)  # exact even with bf16 ties


def test_eval_shape_init():
  params = make_params()
  opt = optax.chain(optax.adamw(0.01), prune_by_magnitude(cubic_sparsity(0.9, 10), WHERE))
  abstract = jax.eval_shape(opt.init, jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
  concrete = opt.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete)):
    assert (a.shape, a.dtype) == (c.shape, c.dtype)
  assert isinstance(abstract[1], PruneByMagnitudeState)


def test_sparse_fine_tuning_keeps_zeros():
  params = make_params()
  zeros = np.zeros((8, 6), bool)
  zeros[::2, ::3] = True
  params["dense"]["kernel"] = jnp.where(zeros, 0.0, params["dense"]["kernel"])
  opt = optax.chain(optax.adamw(0.05), prune_by_magnitude(constant_sparsity(0.0), WHERE))
  state = opt.init(params)
  np.testing.assert_array_equal(find_masks(state)["dense"]["kernel"], ~zeros)
  step, start = make_step(opt), params
  for grads in grad_seq(params, 4):
    params, state = step(params, state, grads)
  w = np.asarray(params["dense"]["kernel"])
  assert (w[zeros] == 0).all() and (w[~zeros] != np.asarray(start["dense"]["kernel"])[~zeros]).all()


def test_nm_and_blocks_through_the_transform():
  params = make_params()
  # Gradual N:M: 3:4 from step 1, 2:4 from step 3, groups along the input axis.
  schedule = lambda t: 0.25 if t < 3 else 0.5
  opt = optax.chain(optax.adamw(0.05), prune_by_magnitude(
      schedule, r"dense/kernel$", pattern=NM(2, 4), events=[1, 3]))
  step, state = make_step(opt), opt.init(params)
  for t, grads in enumerate(grad_seq(params, 4), start=1):
    params, state = step(params, state, grads)
    per_group = (np.asarray(params["dense"]["kernel"]) != 0).reshape(2, 4, 6).sum(1)
    assert (per_group == (3 if t < 3 else 2)).all(), t
  opt = optax.chain(optax.sgd(0.1), prune_by_magnitude(0.5, WHERE, pattern=Blocks(2, 2),
                                                       scope="global"))
  params = make_params()
  params, state = make_step(opt)(params, opt.init(params), grad_seq(params, 1)[0])
  for name in ("dense", "out"):
    tiles = np.asarray(params[name]["kernel"]) != 0
    r, c = tiles.shape
    per_block = tiles.reshape(r // 2, 2, c // 2, 2).sum((1, 3))
    assert set(np.unique(per_block)) <= {0, 4}
  assert sum(np.count_nonzero(params[n]["kernel"]) for n in ("dense", "out")) == 36


def test_callable_schedule_and_bert_paths():
  h = 4
  dense = lambda i, o, s: {"kernel": jnp.asarray(np.random.default_rng(s).normal(size=(i, o)),
                                                 jnp.float32), "bias": jnp.zeros(o)}
  layer = {"attention": {"self": {n: dense(h, h, i) for i, n in enumerate(("query", "key",
                                                                           "value"))},
                         "output": {"dense": dense(h, h, 3)}},
           "intermediate": {"dense": dense(h, 8, 4)}, "output": {"dense": dense(8, h, 5)}}
  params = {"bert": {"encoder": {"layer": {"0": layer}}, "pooler": {"dense": dense(h, h, 6)}},
            "classifier": dense(h, 2, 7)}
  opt = optax.chain(optax.sgd(0.01), prune_by_magnitude(
      optax.linear_schedule(0.0, 0.5, 2), BERT_ENCODER_MATRICES, events=[1, 2]))
  step, state = make_step(opt), opt.init(params)
  plain, plain_state, plain_step_ = params, optax.sgd(0.01).init(params), make_step(
      optax.sgd(0.01))
  for grads in grad_seq(params, 2):
    params, state = step(params, state, grads)
    plain, plain_state = plain_step_(plain, plain_state, grads)
  for (path, p), q in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(plain)):
    name = "/".join(k.key for k in path)
    if "encoder" in name and name.endswith("kernel"):
      assert np.count_nonzero(p) == p.size // 2, name
    else:
      np.testing.assert_array_equal(p, q)


def test_bert_adam_semantics():
  # One step by hand: clip per tensor, no bias correction, decay only on the kernel.
  params = {"dense": {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.array([2.0])},
            "LayerNorm": {"scale": jnp.array([3.0])}}
  grads = {"dense": {"kernel": jnp.array([[3.0, 4.0]]), "bias": jnp.array([0.5])},
           "LayerNorm": {"scale": jnp.array([0.0])}}
  opt = bert_adam(0.1, weight_decay=0.01)
  updates, _ = opt.update(grads, opt.init(params), params)
  g = np.array([3.0, 4.0]) / (5.0 + 1e-6)
  m, v = 0.1 * g, 0.001 * g * g
  expected = -0.1 * (m / (np.sqrt(v) + 1e-6) + 0.01 * np.array([1.0, -1.0]))
  np.testing.assert_allclose(updates["dense"]["kernel"][0], expected, rtol=1e-6)
  gb = 0.5  # norm 0.5 < 1: not clipped; no decay on the bias
  np.testing.assert_allclose(updates["dense"]["bias"], [-0.1 * 0.1 * gb / (np.sqrt(
      0.001 * gb * gb) + 1e-6)], rtol=1e-6)
  np.testing.assert_array_equal(updates["LayerNorm"]["scale"], [0.0])
  assert default_weight_decay_mask(params) == {"dense": {"kernel": True, "bias": False},
                                               "LayerNorm": {"scale": False}}


def test_adamw_warmup_linear():
  params = {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  opt = adamw_warmup_linear(1e-3, total_steps=10, warmup_steps=2)
  step, state = make_step(opt), opt.init(params)
  new, state = step(params, state, jax.tree.map(jnp.ones_like, params))
  jax.tree.map(np.testing.assert_array_equal, new, params)  # lr(0) = 0: no move
  new, _ = step(new, state, jax.tree.map(jnp.ones_like, params))
  assert float(new["w"][0, 0]) < 1.0 and float(new["bias"][0]) < 1.0


def test_bad_options_raise_at_construction():
  with pytest.raises(ValueError, match="ties"):
    prune_by_magnitude(0.5, ties="first")
  with pytest.raises(ValueError, match="scope"):
    prune_by_magnitude(0.5, scope="layer")
  with pytest.raises(TypeError, match="pattern"):
    prune_by_magnitude(0.5, pattern="2:4")
  with pytest.raises(ValueError, match="needs `events`"):
    prune_by_magnitude(optax.linear_schedule(0.0, 0.9, 100))
