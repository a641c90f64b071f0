"""Distillation losses against NumPy computations of the reference formulas."""

from types import SimpleNamespace

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import distill

RTOL = 1e-5


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def scores(rs, batch=3, heads=2, length=5, pad_from=3):
  """Attention scores as the model makes them: padded keys get score - 10000."""
  s = rs.standard_normal((batch, heads, length, length)).astype(np.float32) * 3
  s[..., pad_from:] -= 10000.0
  return s


def test_attention_mse_zeroes_padding_but_counts_it_in_the_mean():
  rs = np.random.RandomState(0)
  s, t = scores(rs), scores(rs)
  zs, zt = np.where(s <= -100, 0, s), np.where(t <= -100, 0, t)
  expected = np.mean((zs - zt) ** 2)  # over batch * heads * len * len, padding included
  np.testing.assert_allclose(distill.attention_mse(s, t), expected, rtol=RTOL)
  # Padded entries contribute exactly 0, whatever their (masked) value.
  t2 = t.copy()
  t2[..., 3:] -= 500.0
  np.testing.assert_allclose(distill.attention_mse(s, t2), expected, rtol=RTOL)


def test_attention_kl_compares_distributions_per_query_row():
  rs = np.random.RandomState(3)
  lengths = [5, 3, 1]  # real tokens per example, of 5
  mask = np.array([[1] * n + [0] * (5 - n) for n in lengths], np.int32)
  s = rs.standard_normal((3, 2, 5, 5)).astype(np.float32) * 3
  t = rs.standard_normal((3, 2, 5, 5)).astype(np.float32) * 3
  s -= 10000.0 * (1 - mask[:, None, None, :])  # padded keys, as the model
  t -= 10000.0 * (1 - mask[:, None, None, :])
  log_s, log_t = np_log_softmax(s.astype(np.float64)), np_log_softmax(t.astype(np.float64))
  rows = np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)  # (batch, heads, queries)
  np.testing.assert_allclose(distill.attention_kl(s, t), rows.mean(), rtol=RTOL)
  # Real query rows only: per example over heads * n rows, then over the batch.
  per_example = [rows[b, :, :n].mean() for b, n in enumerate(lengths)]
  np.testing.assert_allclose(distill.attention_kl(s, t, token_mask=mask),
                             np.mean(per_example), rtol=RTOL)
  # Zero for equal distributions, whatever a row's shift (the softmax ignores it) ...
  np.testing.assert_allclose(distill.attention_kl(t + 4.0, t), 0.0, atol=1e-6)
  assert float(distill.attention_mse(t + 4.0, t)) > 1.0  # ... which the MSE counts
  # ... and a weight-0 row does not count.
  weight = np.array([1.0, 0.0, 1.0], np.float32)
  np.testing.assert_allclose(distill.attention_kl(s, t, weight),
                             rows[[0, 2]].mean(), rtol=RTOL)


def test_hidden_mse_is_the_plain_mean_including_padding():
  rs = np.random.RandomState(1)
  s, t = rs.standard_normal((2, 3, 4, 8)).astype(np.float32)
  np.testing.assert_allclose(distill.hidden_mse(s, t), np.mean((s - t) ** 2), rtol=RTOL)


def test_token_mask_averages_over_real_tokens_only():
  rs = np.random.RandomState(2)
  lengths = [5, 3, 1]  # real tokens per example, of 5
  mask = np.array([[1] * n + [0] * (5 - n) for n in lengths], np.int32)
  s = rs.standard_normal((3, 2, 5, 5)).astype(np.float32)
  t = rs.standard_normal((3, 2, 5, 5)).astype(np.float32)
  s[:, :, :, :] -= 10000.0 * (1 - mask[:, None, None, :])  # padded keys, as the model
  t[:, :, :, :] -= 10000.0 * (1 - mask[:, None, None, :])
  per_example = [np.mean((s[b, :, :n, :n] - t[b, :, :n, :n]) ** 2)
                 for b, n in enumerate(lengths)]  # over heads * n * n real pairs
  np.testing.assert_allclose(distill.attention_mse(s, t, token_mask=mask),
                             np.mean(per_example), rtol=RTOL)
  # Garbage at padded queries no longer counts either.
  s2 = s.copy()
  s2[1, :, 3:, :3] += 7.0
  np.testing.assert_allclose(distill.attention_mse(s2, t, token_mask=mask),
                             np.mean(per_example), rtol=RTOL)
  h_s, h_t = rs.standard_normal((2, 3, 5, 4)).astype(np.float32)
  hidden = [np.mean((h_s[b, :n] - h_t[b, :n]) ** 2) for b, n in enumerate(lengths)]
  np.testing.assert_allclose(distill.hidden_mse(h_s, h_t, token_mask=mask),
                             np.mean(hidden), rtol=RTOL)
  # With every token real it is the reference's plain mean.
  ones = np.ones((3, 5), np.int32)
  np.testing.assert_allclose(distill.hidden_mse(h_s, h_t, token_mask=ones),
                             distill.hidden_mse(h_s, h_t), rtol=RTOL)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_cross_entropy_reference_reduction(temperature):
  rs = np.random.RandomState(2)
  s, t = rs.standard_normal((2, 6, 3)).astype(np.float32) * 2
  p_t = np.exp(np_log_softmax(t / temperature))
  # Mean over batch AND classes (divided by num_classes), no T**2.
  expected = np.mean(-p_t * np_log_softmax(s / temperature))
  np.testing.assert_allclose(distill.soft_cross_entropy(s, t, temperature), expected,
                             rtol=RTOL)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_divergence_is_hinton_kd(temperature):
  rs = np.random.RandomState(3)
  s, t = rs.standard_normal((2, 6, 4)).astype(np.float32) * 2
  log_p_s, log_p_t = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
  kl = np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  np.testing.assert_allclose(distill.kl_divergence(s, t, temperature),
                             temperature ** 2 * kl.mean(), rtol=RTOL)
  assert float(distill.kl_divergence(t, t, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_regression_and_label_losses():
  rs = np.random.RandomState(4)
  pred = rs.standard_normal((5, 1)).astype(np.float32)
  gold = rs.uniform(0, 5, 5).astype(np.float32)
  np.testing.assert_allclose(distill.regression_mse(pred, gold),
                             np.mean((pred[:, 0] - gold) ** 2), rtol=RTOL)
  logits = rs.standard_normal((5, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0], np.int32)
  np.testing.assert_allclose(distill.label_cross_entropy(logits, labels),
                             -np.mean(np_log_softmax(logits)[np.arange(5), labels]),
                             rtol=RTOL)
  with pytest.raises(ValueError, match="one output"):
    distill.regression_mse(logits, gold)


def test_zero_weight_rows_do_not_count():
  rs = np.random.RandomState(5)
  s, t = scores(rs, batch=4), scores(rs, batch=4)
  hs, ht = rs.standard_normal((2, 4, 5, 8)).astype(np.float32)
  ls, lt = rs.standard_normal((2, 4, 3)).astype(np.float32)
  weight = np.array([1, 1, 1, 0], np.float32)
  keep = slice(0, 3)
  pairs = [
      (distill.attention_mse(s, t, weight), distill.attention_mse(s[keep], t[keep])),
      (distill.hidden_mse(hs, ht, weight), distill.hidden_mse(hs[keep], ht[keep])),
      (distill.soft_cross_entropy(ls, lt, 2.0, weight),
       distill.soft_cross_entropy(ls[keep], lt[keep], 2.0)),
      (distill.kl_divergence(ls, lt, 2.0, weight), distill.kl_divergence(ls[keep], lt[keep], 2.0)),
      (distill.label_cross_entropy(ls, np.array([0, 1, 2, 0]), weight),
       distill.label_cross_entropy(ls[keep], np.array([0, 1, 2]))),
  ]
  for weighted, subset in pairs:
    np.testing.assert_allclose(weighted, subset, rtol=RTOL)
  assert float(distill.hidden_mse(hs, ht, np.zeros(4, np.float32))) == 0.0


def test_layer_map_reference_formula():
  assert distill.layer_map(4, 12) == ((2, 5, 8, 11), (0, 3, 6, 9, 12))
  assert distill.layer_map(6, 12) == ((1, 3, 5, 7, 9, 11), (0, 2, 4, 6, 8, 10, 12))
  assert distill.layer_map(3, 3) == ((0, 1, 2), (0, 1, 2, 3))
  for bad in [(5, 12), (12, 6), (0, 4)]:
    with pytest.raises(ValueError):
      distill.layer_map(*bad)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6))
def test_layer_map_ends_meet_and_increase(student_layers, k):
  attention, hidden = distill.layer_map(student_layers, student_layers * k)
  assert attention[-1] == student_layers * k - 1 and hidden[-1] == student_layers * k
  assert hidden[0] == 0 and len(hidden) == student_layers + 1
  assert list(attention) == sorted(set(attention)) and list(hidden) == sorted(set(hidden))
  assert all(0 <= a < student_layers * k for a in attention)


def fake_output(rs, layers, batch=3, length=5, hidden=8, labels=3):
  return SimpleNamespace(
      logits=rs.standard_normal((batch, labels)).astype(np.float32),
      hidden_states=tuple(rs.standard_normal((batch, length, hidden)).astype(np.float32)
                          for _ in range(layers + 1)),
      attention_scores=tuple(scores(rs, batch, 2, length) for _ in range(layers)))


def np_attention(s, t):
  return np.mean((np.where(s <= -100, 0, s) - np.where(t <= -100, 0, t)) ** 2)


def test_distillation_loss_sums_mapped_terms_with_weights():
  rs = np.random.RandomState(6)
  student, teacher = fake_output(rs, 2), fake_output(rs, 4)
  weights = distill.KDWeights(attention=0.5, hidden=2.0, prediction=3.0)
  total, terms = distill.distillation_loss(student, teacher, weights=weights, temperature=2.0)
  # 2-layer student, 4-layer teacher: attention of teacher layers 1, 3; states 0, 2, 4.
  att = sum(np_attention(student.attention_scores[i], teacher.attention_scores[j])
            for i, j in [(0, 1), (1, 3)])
  hid = sum(np.mean((student.hidden_states[i] - teacher.hidden_states[j]) ** 2)
            for i, j in [(0, 0), (1, 2), (2, 4)])
  pred = np.mean(-np.exp(np_log_softmax(teacher.logits / 2)) * np_log_softmax(student.logits / 2))
  np.testing.assert_allclose(terms["attention"], att, rtol=RTOL)
  np.testing.assert_allclose(terms["hidden"], hid, rtol=RTOL)
  np.testing.assert_allclose(terms["prediction"], pred, rtol=RTOL)
  np.testing.assert_allclose(total, 0.5 * att + 2.0 * hid + 3.0 * pred, rtol=RTOL)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in terms.values())


def test_distillation_loss_kl_option_and_skipped_terms():
  rs = np.random.RandomState(7)
  student, teacher = fake_output(rs, 2), fake_output(rs, 2)
  student.attention_scores = None  # not computed: its weight is 0
  total, terms = distill.distillation_loss(
      student, teacher, weights=distill.KDWeights(attention=0.0), prediction_loss="kl",
      temperature=2.0)
  assert float(terms["attention"]) == 0.0
  np.testing.assert_allclose(
      terms["prediction"], distill.kl_divergence(student.logits, teacher.logits, 2.0),
      rtol=RTOL)
  np.testing.assert_allclose(total, terms["hidden"] + terms["prediction"], rtol=RTOL)
  with pytest.raises(ValueError, match="attention_scores"):
    distill.distillation_loss(student, teacher)
  with pytest.raises(ValueError, match="prediction_loss"):
    distill.distillation_loss(student, teacher, prediction_loss="mse")


def test_distillation_loss_attention_kl_option_maps_layers_like_the_mse():
  rs = np.random.RandomState(10)
  student, teacher = fake_output(rs, 2), fake_output(rs, 4)
  weights = distill.KDWeights(attention=2.0, hidden=0.0, prediction=0.0)
  total, terms = distill.distillation_loss(student, teacher, weights=weights,
                                           attention_loss="kl")
  kl = sum(distill.attention_kl(student.attention_scores[i], teacher.attention_scores[j])
           for i, j in [(0, 1), (1, 3)])  # layer_map(2, 4), as the MSE's
  np.testing.assert_allclose(terms["attention"], kl, rtol=RTOL)
  np.testing.assert_allclose(total, 2.0 * kl, rtol=RTOL)
  with pytest.raises(ValueError, match="attention_loss"):
    distill.distillation_loss(student, teacher, attention_loss="cosine")


def test_regression_prediction_term_uses_gold_labels_not_the_teacher():
  rs = np.random.RandomState(8)
  student, teacher = fake_output(rs, 1, labels=1), fake_output(rs, 1, labels=1)
  gold = rs.uniform(0, 5, 3).astype(np.float32)
  weights = distill.KDWeights(attention=0.0, hidden=0.0)
  total, terms = distill.distillation_loss(student, teacher, labels=gold, weights=weights)
  np.testing.assert_allclose(total, np.mean((student.logits[:, 0] - gold) ** 2), rtol=RTOL)
  teacher.logits = teacher.logits + 100.0  # the teacher's prediction is not used
  np.testing.assert_allclose(
      distill.distillation_loss(student, teacher, labels=gold, weights=weights)[0], total,
      rtol=RTOL)
  with pytest.raises(ValueError, match="gold labels"):
    distill.distillation_loss(student, teacher, weights=weights)


def test_mismatched_shapes_raise():
  rs = np.random.RandomState(9)
  student, teacher = fake_output(rs, 2, hidden=8), fake_output(rs, 2, hidden=16)
  with pytest.raises(ValueError, match="hidden states"):
    distill.distillation_loss(student, teacher, weights=distill.KDWeights(attention=0.0))


def test_label_term_is_gold_cross_entropy_and_reported_only_when_weighted():
  rs = np.random.RandomState(9)
  student, teacher = fake_output(rs, 2), fake_output(rs, 2)
  gold = np.array([1, 0, 1])
  log_p = np_log_softmax(student.logits.astype(np.float64))
  ce = -np.mean(log_p[np.arange(3), gold])
  weights = distill.KDWeights(attention=0.0, hidden=0.0, prediction=1.0, labels=0.5)
  total, terms = distill.distillation_loss(student, teacher, labels=gold, weights=weights)
  np.testing.assert_allclose(terms["labels"], ce, rtol=RTOL)
  np.testing.assert_allclose(total, terms["prediction"] + 0.5 * ce, rtol=RTOL)
  _, plain = distill.distillation_loss(student, teacher, labels=gold)
  assert "labels" not in plain  # the reference's three terms only
  with pytest.raises(ValueError, match="gold labels"):
    distill.distillation_loss(student, teacher, weights=weights)


def test_traced_weights_are_always_computed_and_scale_their_term():
  rs = np.random.RandomState(10)
  student, teacher = fake_output(rs, 2), fake_output(rs, 2)
  _, terms = distill.distillation_loss(student, teacher)
  off = distill.KDWeights(attention=jnp.float32(0.0), hidden=jnp.float32(2.0))
  total, traced = distill.distillation_loss(student, teacher, weights=off)
  np.testing.assert_allclose(traced["attention"], terms["attention"], rtol=RTOL)
  np.testing.assert_allclose(total, 2 * terms["hidden"] + terms["prediction"], rtol=RTOL)
  assert not distill.is_active(0) and not distill.is_active(0.0)
  assert distill.is_active(jnp.float32(0.0)) and distill.is_active(lambda step: 0.0)


def test_group_heads_averages_consecutive_teacher_heads_and_keeps_padding():
  t = np.arange(2 * 4 * 2 * 3, dtype=np.float32).reshape(2, 4, 2, 3)  # heads a, b, c, d
  t[..., 2] -= 10000.0  # a padded key, in every head
  grouped = np.asarray(distill.group_heads(t, 2))
  np.testing.assert_allclose(grouped[:, 0], (t[:, 0] + t[:, 1]) / 2)
  np.testing.assert_allclose(grouped[:, 1], (t[:, 2] + t[:, 3]) / 2)
  assert (grouped[..., 2] <= distill.PADDING_THRESHOLD).all()
  np.testing.assert_allclose(distill.group_heads(t, 1)[:, 0], t.mean(1))
  np.testing.assert_array_equal(distill.group_heads(t, 4), t)
  with pytest.raises(ValueError, match="cannot average 4 teacher heads into 3"):
    distill.group_heads(t, 3)


def test_fewer_student_heads_learn_the_group_means():
  rs = np.random.RandomState(11)
  student, teacher = fake_output(rs, 1), fake_output(rs, 2)
  teacher.attention_scores = tuple(scores(rs, 3, 4, 5) for _ in range(2))  # 4 heads vs 2
  _, terms = distill.distillation_loss(student, teacher,
                                       weights=distill.KDWeights(hidden=0.0, prediction=0.0))
  t = teacher.attention_scores[1]  # layer map: student layer 0 <- teacher layer 1
  grouped = np.stack([(t[:, 0] + t[:, 1]) / 2, (t[:, 2] + t[:, 3]) / 2], axis=1)
  np.testing.assert_allclose(terms["attention"],
                             np_attention(student.attention_scores[0], grouped), rtol=RTOL)


def test_hidden_map_projects_student_states_to_the_teacher_width():
  rs = np.random.RandomState(12)
  student, teacher = fake_output(rs, 1, hidden=2), fake_output(rs, 1, hidden=3)
  hidden_map = {"kernel": np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5]], np.float32),
                "bias": np.array([0.1, 0.2, 0.3], np.float32)}
  _, terms = distill.distillation_loss(
      student, teacher, weights=distill.KDWeights(attention=0.0, prediction=0.0),
      hidden_map=hidden_map)
  def mapped(h):  # by hand: [x0 + .1, -x1 + .2, 2 x0 + .5 x1 + .3]
    return np.stack([h[..., 0] + 0.1, -h[..., 1] + 0.2, 2 * h[..., 0] + 0.5 * h[..., 1] + 0.3], -1)
  expected = sum(np.mean((mapped(s) - t) ** 2)
                 for s, t in zip(student.hidden_states, teacher.hidden_states))
  np.testing.assert_allclose(terms["hidden"], expected, rtol=RTOL)
  with pytest.raises(ValueError, match="hidden states: student shape"):
    distill.distillation_loss(student, teacher, weights=distill.KDWeights(attention=0.0))


def test_init_hidden_map_and_split_params():
  selection = distill.init_hidden_map(None, 2, 4, kept=[1, 3])
  np.testing.assert_array_equal(selection["kernel"], [[0, 1, 0, 0], [0, 0, 0, 1]])
  np.testing.assert_array_equal(selection["bias"], np.zeros(4))
  fresh = distill.init_hidden_map(jax.random.key(0), 16, 32)
  assert fresh["kernel"].shape == (16, 32) and 0.01 < float(np.std(fresh["kernel"])) < 0.03
  params = {"bert": {"x": 1}, "classifier": {"y": 2}, distill.PARAMS_KEY: {"hidden_map": fresh}}
  model, maps = distill.split_params(params)
  assert model == {"bert": {"x": 1}, "classifier": {"y": 2}} and maps["hidden_map"] is fresh
  assert distill.split_params(model) == (model, {})
