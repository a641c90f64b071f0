"""Masks: path selection, magnitude ranking (ties, scopes), N:M and blocks, reports."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import BERT_ENCODER_MATRICES
from jaxprune import Blocks
from jaxprune import NM
from jaxprune import apply_masks
from jaxprune import keep_count
from jaxprune import magnitude_masks
from jaxprune import prunable_tree
from jaxprune import select
from jaxprune import sparsity_report


def bert_like(layers=2, h=4, ff=8):
  dense = lambda i, o: {"kernel": jnp.ones((i, o)), "bias": jnp.ones(o)}
  norm = {"scale": jnp.ones(h), "bias": jnp.ones(h)}
  layer = {
      "attention": {"self": {n: dense(h, h) for n in ("query", "key", "value")},
                    "output": {"dense": dense(h, h), "LayerNorm": norm}},
      "intermediate": {"dense": dense(h, ff)},
      "output": {"dense": dense(ff, h), "LayerNorm": norm},
  }
  return {"bert": {"embeddings": {"word_embeddings": {"embedding": jnp.ones((10, h))},
                                  "LayerNorm": norm},
                   "encoder": {"layer": {str(i): layer for i in range(layers)}},
                   "pooler": {"dense": dense(h, h)}},
          "classifier": dense(h, 2)}


def selected_paths(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return sorted("/".join(str(k.key) for k in path) for path, v in flat if v)


def test_bert_encoder_matrices_selects_the_6_matrices_per_layer():
  got = selected_paths(select(bert_like(), BERT_ENCODER_MATRICES))
  names = ["attention/output/dense", "attention/self/key", "attention/self/query",
           "attention/self/value", "intermediate/dense", "output/dense"]
  assert got == [f"bert/encoder/layer/{i}/{n}/kernel" for i in range(2) for n in names]


def test_select_paths_and_sequences():
  params = {"blocks": [{"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2))}], "b": jnp.ones(2)}
  assert select(params, r"^blocks/1/") == {"blocks": [{"w": False}, {"w": True}], "b": False}
  assert select(params, [r"^b$", r"0/w"]) == {"blocks": [{"w": True}, {"w": False}],
                                              "b": True}


def test_prunable_tree_forms():
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3), "i": jnp.ones((2, 2), jnp.int32)}
  assert prunable_tree(params) == {"w": True, "b": False, "i": False}
  assert prunable_tree(params, "b") == {"w": False, "b": True, "i": False}
  assert prunable_tree(params, lambda p: {"w": False, "b": True, "i": False})["b"]
  with pytest.raises(ValueError, match="structure"):
    prunable_tree(params, {"w": True})
  with pytest.raises(TypeError, match="static"):
    prunable_tree(params, jax.tree.map(lambda x: jnp.array(True), params))


def test_hand_computed_per_matrix():
  params = {"w": jnp.array([[0.1, -0.5, 0.3], [0.2, -0.05, 0.4]]), "b": jnp.array([0.0, 1.0])}
  masks = magnitude_masks(params, 0.5)
  np.testing.assert_array_equal(masks["w"], [[False, True, True], [False, False, True]])
  np.testing.assert_array_equal(masks["b"], [True, True])  # not prunable: all True
  assert masks["w"].dtype == jnp.bool_ and masks["b"].shape == (2,)
  np.testing.assert_array_equal(apply_masks(params, masks)["w"],
                                np.float32([[0.0, -0.5, 0.3], [0.0, 0.0, 0.4]]))


def test_ties_keep_vs_exact():
  params = {"w": jnp.array([[1.0, 2.0, -2.0, 3.0]])}
  keep = magnitude_masks(params, 0.5, ties="keep")["w"]
  exact = magnitude_masks(params, 0.5, ties="exact")["w"]
  np.testing.assert_array_equal(keep, [[False, True, True, True]])  # |w| >= 2nd largest
  np.testing.assert_array_equal(exact, [[False, True, False, True]])  # lower index wins


def test_old_masks_never_come_back():
  params = {"w": jnp.array([[9.0, 1.0], [2.0, 3.0]])}
  old = {"w": jnp.array([[False, True], [True, True]])}
  masks = magnitude_masks(params, 0.5, old_masks=old)["w"]
  np.testing.assert_array_equal(masks, [[False, False], [True, True]])
  # More to keep than survivors: keep all survivors, still not the pruned one.
  masks = magnitude_masks(params, 0.0, old_masks=old, ties="keep")["w"]
  np.testing.assert_array_equal(masks, old["w"])


def test_keep_below_one_prunes_the_whole_matrix():
  params = {"w": jnp.arange(1.0, 11.0).reshape(2, 5)}
  assert not magnitude_masks(params, 0.95)["w"].any()
  assert not magnitude_masks(params, 0.9, rounding="reference", ties="keep")["w"].any()
  assert magnitude_masks(params, 0.9)["w"].sum() == 1


def test_global_scope_hand_computed():
  params = {"a": jnp.array([[1.0, 8.0], [3.0, 4.0]]), "b": jnp.array([[7.0, 2.0], [6.0, 5.0]])}
  masks = magnitude_masks(params, 0.5, scope="global")
  np.testing.assert_array_equal(masks["a"], [[False, True], [False, False]])
  np.testing.assert_array_equal(masks["b"], [[True, False], [True, True]])
  per = magnitude_masks(params, 0.5)
  assert per["a"].sum() == per["b"].sum() == 2


def test_nm_hand_computed():
  # (in=4, out=2): one group of 4 input rows per output column.
  w = jnp.array([[0.1, -4.0], [-3.0, 1.0], [2.0, 1.0], [0.5, 3.0]])
  mask = magnitude_masks({"k": w}, None, pattern=NM(2, 4))["k"]
  np.testing.assert_array_equal(mask, [[False, True], [True, False], [True, False],
                                       [False, True]])
  # 25% sparsity under a 2:4 pattern keeps 3 of 4; ties (1.0, 1.0) by index.
  mask = magnitude_masks({"k": w}, 0.25, pattern=NM(2, 4))["k"]
  np.testing.assert_array_equal(mask.sum(0), [3, 3])
  assert mask[1, 1] and not mask[2, 1]
  with pytest.raises(ValueError, match="fewer than"):
    magnitude_masks({"k": w}, 0.9, pattern=NM(2, 4))
  with pytest.raises(ValueError, match="multiple of m"):
    magnitude_masks({"k": jnp.ones((6, 2))}, None, pattern=NM(2, 4))


def test_blocks_hand_computed():
  w = jnp.array([[1.0, 1.0, 0.0, 5.0],
                 [1.0, 1.0, 0.0, 0.0],
                 [0.0, 0.0, 2.0, 2.0],
                 [0.0, 9.0, 2.0, 2.0]])
  mask = magnitude_masks({"k": w}, 0.5, pattern=Blocks(2, 2))["k"]  # L1: 4, 5 / 9, 8
  np.testing.assert_array_equal(mask, np.kron([[0, 0], [1, 1]], np.ones((2, 2))) == 1)
  # 1x4 blocks along rows (4 consecutive inputs of one output in a (in, out) kernel).
  mask = magnitude_masks({"k": w}, 0.5, pattern=Blocks(4, 1))["k"]
  np.testing.assert_array_equal(mask.all(0), [False, True, False, True])
  np.testing.assert_array_equal(mask.any(0), mask.all(0))
  with pytest.raises(ValueError, match="tiled"):
    magnitude_masks({"k": jnp.ones((3, 4))}, 0.5, pattern=Blocks(2, 2))


def test_sparsity_report():
  tree = {"w": jnp.array([[0.0, 1.0], [0.0, 2.0]]), "b": jnp.array([0.0, 3.0, 4.0])}
  r = sparsity_report(tree)
  assert r.leaves["w"] == (4, 2, 0.5) and r.leaves["b"][:2] == (3, 2)
  assert r.leaves["b"].sparsity == pytest.approx(1 / 3)
  assert (r.size, r.nonzero) == (7, 4) and r.sparsity == pytest.approx(3 / 7)
  only_w = sparsity_report(tree, where="w")
  assert list(only_w.leaves) == ["w"] and only_w.sparsity == 0.5
  masks = sparsity_report({"m": jnp.array([True, False, False, False])})
  assert masks.sparsity == 0.75
  assert "total" in r.format()


def test_layer_sparsity_counts_each_encoder_layer_and_the_total_hand_computed():
  """The pruning-event report (``report.layer_sparsity``), per layer of a 2-layer model
  (the CLI's tiny runs have one). A layer holds 4 x (4x4) attention matrices and 4x8 +
  8x4 FFN matrices: 128 prunable entries. All of layer 0's query (16) and half of layer
  1's FFN output (16) pruned, and the classifier's (not selected) with them."""
  import optax
  from jaxprune import prune_by_magnitude
  from jaxprune import report
  params = bert_like(layers=2, h=4, ff=8)
  opt_state = optax.chain(optax.sgd(0.1),
                          prune_by_magnitude(0.5, BERT_ENCODER_MATRICES)).init(params)
  masks = jax.tree.map(lambda x: np.ones(x.shape, bool), params)
  masks["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"][:] = False
  masks["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"][:4] = False
  masks["classifier"]["kernel"][:] = False
  opt_state = (opt_state[0], opt_state[1]._replace(masks=masks))
  got = report.layer_sparsity(opt_state, BERT_ENCODER_MATRICES)
  assert got == {"layer_0": 16 / 128, "layer_1": 16 / 128, "total": 32 / 256}
  # Any selection: all of layer 1's 172 entries (its biases and LayerNorms too).
  only_1 = report.layer_sparsity(opt_state, "encoder/layer/1/")
  assert list(only_1) == ["layer_1", "total"] and only_1["total"] == pytest.approx(16 / 172)


def test_bf16_and_jit():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.bfloat16)
  f = jax.jit(lambda p: magnitude_masks(p, 0.75))
  mask = f({"w": w})["w"]
  assert mask.dtype == jnp.bool_ and int(mask.sum()) == 32  # exact despite bf16 ties
  kept, dropped = np.abs(np.asarray(w, np.float32))[mask], np.abs(np.asarray(w, np.float32))[~mask]
  assert kept.min() >= dropped.max()


def numpy_masks(w, alive, k, ties):
  """Independent reference: stable descending argsort (exact) or threshold (keep)."""
  a = np.where(alive, np.abs(w).astype(np.float64), -1.0).ravel()
  if k == 0:
    return np.zeros(w.shape, bool)
  if ties == "keep":
    thr = np.sort(a)[::-1][k - 1]
    return ((a >= thr) & (a >= 0)).reshape(w.shape)
  order = np.argsort(-a, kind="stable")[:k]
  out = np.zeros(a.size, bool)
  out[order] = True
  return (out & (a >= 0)).reshape(w.shape)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(1, 7), (6, 5), (16, 12)]), sparsity=st.floats(0.0, 1.0),
       ties=st.sampled_from(["exact", "keep"]), levels=st.sampled_from([3, 1000]),
       seed=st.integers(0, 2**16), prune_frac=st.floats(0.0, 0.5))
def test_matches_numpy_reference(shape, sparsity, ties, levels, seed, prune_frac):
  (rows, cols), rng = shape, np.random.default_rng(seed)
  w = (rng.integers(-levels, levels + 1, (rows, cols)) / levels).astype(np.float32)
  alive = rng.random((rows, cols)) >= prune_frac
  k = keep_count(rows * cols, sparsity)
  got = magnitude_masks({"w": jnp.asarray(w)}, sparsity, where="w",
                        old_masks={"w": jnp.asarray(alive)}, ties=ties)["w"]
  np.testing.assert_array_equal(got, numpy_masks(w, alive, k, ties))
  assert not (np.asarray(got) & ~alive).any()  # monotone
  if ties == "exact":
    assert int(got.sum()) == min(k, int(alive.sum()))


@settings(max_examples=15, deadline=None)
@given(shapes=st.sampled_from([[(3, 4)], [(2, 2), (5, 3), (1, 6)], [(4, 4), (4, 4)]]),
       sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_global_matches_numpy_reference(shapes, sparsity, seed):
  rng = np.random.default_rng(seed)
  ws = [(rng.integers(-4, 5, s) / 4).astype(np.float32) for s in shapes]
  params = {f"w{i}": jnp.asarray(w) for i, w in enumerate(ws)}
  total = sum(w.size for w in ws)
  k = keep_count(total, sparsity)
  got = magnitude_masks(params, sparsity, where=lambda p: jax.tree.map(lambda _: True, p),
                        scope="global")
  flat = np.concatenate([w.ravel() for w in ws])  # dict order == leaf order (sorted keys)
  want = numpy_masks(flat, np.ones(flat.shape, bool), k, "exact")
  got_flat = np.concatenate([np.asarray(got[f"w{i}"]).ravel() for i in range(len(ws))])
  np.testing.assert_array_equal(got_flat, want)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 4), shape=st.sampled_from([(1, 3), (5, 2)]),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_nm_exactly_n_per_group(n, shape, seed, ties):
  (groups, cols), m = shape, 4
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(groups * m, cols)).astype(np.float32)
  if ties:
    w = np.round(w)  # many equal magnitudes
  mask = np.asarray(magnitude_masks({"k": jnp.asarray(w)}, None, pattern=NM(n, m))["k"])
  g = mask.reshape(groups, m, cols)
  assert (g.sum(1) == n).all()
  a = np.abs(w).reshape(groups, m, cols)
  kept_min = np.where(g, a, np.inf).min(1)
  dropped_max = np.where(g, -np.inf, a).max(1)
  assert (kept_min >= dropped_max).all()
