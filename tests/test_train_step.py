"""The pure train / eval steps of every mode on tiny BERTs (one CPU device)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiprocess_worker as worker
from jaxprune import distill, masks, schedules, train, transforms
from jaxprune.models import bert

KD_METRICS = {"loss", "attention_loss", "hidden_loss", "prediction_loss", "grad_norm",
              "learning_rate", "sparsity"}
LABEL_METRICS = {"loss", "grad_norm", "learning_rate", "sparsity"}


def no_dropout(layers: int, **changes) -> bert.BertForSequenceClassification:
  return bert.BertForSequenceClassification(bert.BertConfig.tiny(
      num_hidden_layers=layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      **changes))


def padded(batch: dict, rows: int) -> dict:
  """The batch with its last ``rows`` rows turned into zero-weight padding."""
  batch = {k: v.copy() for k, v in batch.items()}
  batch["weight"][-rows:] = 0.0
  return batch


def scramble_padding(batch: dict) -> dict:
  """Other ids and labels in the zero-weight rows: the loss must not see them."""
  out = {k: v.copy() for k, v in batch.items()}
  pad = out["weight"] == 0
  out["input_ids"][pad] = (out["input_ids"][pad] * 7 + 3) % 128
  out["labels"][pad] = 1 - out["labels"][pad]
  return out


def prunable_leaves(tree) -> dict:
  flags = masks.prunable_tree(tree, masks.BERT_ENCODER_MATRICES)
  return {k: v for (k, v), f in zip(worker.flatten(tree).items(), jax.tree.leaves(flags)) if f}


@pytest.mark.slow
def test_distill_prune_follows_the_schedule_and_zeroes_pruned_weights():
  state, metrics, _ = worker.reference()
  schedule = worker.setup()["schedule"]
  mask_tree = transforms.find_masks(state.opt_state)
  params, mask = prunable_leaves(state.params), prunable_leaves(mask_tree)
  assert len(params) == 6  # the 6 encoder matrices of the 1-layer student
  total = sum(p.size for p in params.values())
  for t, m in enumerate(metrics, start=1):
    # Exactly keep_count(size, s_t) weights survive in every matrix.
    assert m["sparsity"] == pytest.approx(worker.expected_sparsity(t), abs=1e-7)
    assert schedule.in_effect(t) <= m["sparsity"] <= schedule.in_effect(t) + 6 / total
  zeros = sum(int(np.sum(np.asarray(p) == 0)) for p in params.values())
  assert zeros / total == pytest.approx(metrics[-1]["sparsity"])
  for name, p in params.items():
    assert not np.any(np.asarray(p)[~np.asarray(mask[name])]), name
  others = [m for k, m in worker.flatten(mask_tree).items() if k not in mask]
  assert all(bool(np.all(m)) for m in others)  # embeddings, biases... never pruned
  assert metrics[-1]["loss"] < metrics[0]["loss"]


@pytest.mark.slow
def test_distill_prune_metrics_step_purity_and_single_compile():
  _, metrics, step = worker.reference()
  s = worker.setup()
  assert set(metrics[0]) == KD_METRICS
  for m in metrics:
    assert m["learning_rate"] == pytest.approx(worker.LEARNING_RATE)
    assert m["loss"] == pytest.approx(
        m["attention_loss"] + m["hidden_loss"] + m["prediction_loss"], rel=1e-6)
    assert all(np.isfinite(v) for v in m.values()) and m["grad_norm"] > 0
  # Same state + batch -> same result (dropout keys come from the state), and the
  # five steps above compiled once.
  state = train.create_train_state(s["student_params"], s["tx"], jax.random.key(2))
  a, ma = step(state, s["teacher_params"], s["batches"][0])
  b, mb = step(state, s["teacher_params"], s["batches"][0])
  assert {k: float(v) for k, v in ma.items()} == {k: float(v) for k, v in mb.items()}
  assert float(ma["loss"]) == metrics[0]["loss"]
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert int(a.step) == 1 and step._cache_size() == 1


def test_event_and_plain_variants_share_one_trace_of_the_models(monkeypatch):
  """The two programs of a prune run (``prune_event`` True / False) trace the student's
  and teacher's forward and backward passes once between them (the inner ``jax.jit``
  of ``make_train_step``): for BERT-base that halves the tracing (bench/trace_step.py)."""
  s = worker.setup()
  traced = []
  loss = distill.distillation_loss
  monkeypatch.setattr(distill, "distillation_loss",
                      lambda *a, **k: traced.append(1) or loss(*a, **k))
  step = jax.jit(train.make_train_step(s["student"], s["tx"], teacher=s["teacher"],
                                       learning_rate=worker.LEARNING_RATE),
                 static_argnums=(3,))
  state = jax.eval_shape(
      lambda: train.create_train_state(s["student_params"], s["tx"], jax.random.key(2)))
  for event in (True, False, None):
    step.trace(state, s["teacher_params"], s["batches"][0], event)
  assert len(traced) == 1


@pytest.fixture(scope="module")
def label_batch():
  return padded(worker.setup()["batches"][0], rows=2)


@pytest.mark.slow
def test_finetune_learns_labels_ignores_padding_and_matches_eval(label_batch):
  model = no_dropout(1)
  # The learning rate metric is read from inject_hyperparams' state here.
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=optax.linear_schedule(2e-2, 1e-2, 5))
  step = jax.jit(train.make_train_step(model, tx, mode="finetune"))
  state0 = train.create_train_state(worker.random_params(model, 0), tx, jax.random.key(0))
  state, losses, lrs = state0, [], []
  for _ in range(6):
    state, m = step(state, None, label_batch)
    losses.append(float(m["loss"]))
    lrs.append(float(m["learning_rate"]))
  assert set(m) == LABEL_METRICS and float(m["sparsity"]) == 0.0
  assert lrs == pytest.approx([2e-2, 1.8e-2, 1.6e-2, 1.4e-2, 1.2e-2, 1e-2])
  assert losses[-1] < 0.5 * losses[0]
  # Step 1's loss is the weighted cross-entropy of eval_step's logits (dropout is 0).
  logits = jax.jit(train.make_eval_step(model))(state0.params, label_batch)
  assert logits.shape == (worker.GLOBAL_BATCH, 2)
  w = label_batch["weight"]
  logp = jax.nn.log_softmax(np.asarray(logits))
  nll = -np.asarray(logp)[np.arange(len(w)), label_batch["labels"]]
  assert losses[0] == pytest.approx(float(np.sum(nll * w) / np.sum(w)), rel=1e-5)
  # Zero-weight rows change neither the loss nor the update.
  s1, m1 = step(state0, None, label_batch)
  s2, m2 = step(state0, None, scramble_padding(label_batch))
  assert float(m1["loss"]) == float(m2["loss"])
  jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
  assert step._cache_size() == 1


@pytest.mark.slow
def test_prune_labels_prunes_on_schedule_without_a_teacher(label_batch):
  model = no_dropout(1)
  lr = optax.linear_schedule(1e-2, 0.0, 10)
  tx = optax.chain(optax.adamw(lr),
                   transforms.prune_by_magnitude(schedules.one_shot(0.5, step=2),
                                                 masks.BERT_ENCODER_MATRICES))
  step = jax.jit(train.make_train_step(model, tx, mode="prune_labels", learning_rate=lr))
  state = train.create_train_state(worker.random_params(model, 0), tx, jax.random.key(0))
  metrics = []
  for _ in range(3):
    state, m = step(state, None, label_batch)
    metrics.append({k: float(v) for k, v in m.items()})
  assert set(metrics[0]) == LABEL_METRICS
  assert [m["sparsity"] for m in metrics] == [0.0, 0.5, 0.5]
  assert [m["learning_rate"] for m in metrics] == pytest.approx([1e-2, 9e-3, 8e-3])
  params = prunable_leaves(state.params)
  assert sum(int(np.sum(np.asarray(p) == 0)) for p in params.values()) == sum(
      p.size for p in params.values()) // 2


@pytest.mark.slow
@pytest.mark.parametrize("mean_over,attention_loss", [("all", "mse"), ("tokens", "kl")])
def test_distill_dense_kl_matches_distillation_loss_and_teacher_dropout_switch(
    label_batch, mean_over, attention_loss):
  student, teacher = no_dropout(1), bert.BertForSequenceClassification(
      bert.BertConfig.tiny(num_hidden_layers=2))  # the teacher keeps its 0.1 dropout
  s_params, t_params = worker.random_params(student, 0), worker.random_params(teacher, 1)
  tx = optax.adam(1e-3)
  kwargs = dict(mode="distill", teacher=teacher, prediction_loss="kl", temperature=2.0,
                learning_rate=1e-3, kd_mean_over=mean_over, attention_loss=attention_loss)
  assert (label_batch["attention_mask"] == 0).any()  # so that the two means differ
  state = train.create_train_state(s_params, tx, jax.random.key(0))
  _, m = jax.jit(train.make_train_step(student, tx, **kwargs))(state, t_params, label_batch)
  assert set(m) == KD_METRICS and float(m["sparsity"]) == 0.0

  @jax.jit
  def expected(batch):
    outputs = dict(output_hidden_states=True, output_attention_scores=True)
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    s = student.apply({"params": s_params}, *args, **outputs)
    t = teacher.apply({"params": t_params}, *args, **outputs)
    return distill.distillation_loss(
        s, t, weight=batch["weight"], temperature=2.0, prediction_loss="kl",
        token_mask=batch["attention_mask"] if mean_over == "tokens" else None,
        attention_loss=attention_loss)

  total, terms = expected(label_batch)
  assert float(m["loss"]) == pytest.approx(float(total), rel=1e-5)
  for k, v in terms.items():
    assert float(m[f"{k}_loss"]) == pytest.approx(float(v), rel=1e-5)
  # With the reference's teacher dropout the teacher's outputs, hence the loss, change.
  step = jax.jit(train.make_train_step(student, tx, teacher_dropout=True, **kwargs))
  _, m_drop = step(state, t_params, label_batch)
  assert abs(float(m_drop["hidden_loss"]) - float(terms["hidden"])) > 1e-4


def test_mode_and_optimizer_must_agree(label_batch):
  model = no_dropout(1)
  params = worker.random_params(model, 0)
  dense, pruning = optax.sgd(0.1), optax.chain(
      optax.sgd(0.1), transforms.prune_by_magnitude(0.5, masks.BERT_ENCODER_MATRICES))

  def trace(mode, tx, **kwargs):
    step = train.make_train_step(model, tx, mode=mode, learning_rate=0.1, **kwargs)
    state = train.create_train_state(params, tx, jax.random.key(0))
    return jax.eval_shape(step, state, params, label_batch)  # traces, compiles nothing

  with pytest.raises(ValueError, match="no pruning masks"):
    trace("prune_labels", dense)
  with pytest.raises(ValueError, match="trains dense"):
    trace("distill", pruning, teacher=model)
  with pytest.raises(ValueError, match="selects no params"):
    trace("prune_labels", pruning, prune_where=r"^nothing$")
  with pytest.raises(ValueError, match="needs a teacher"):
    train.make_train_step(model, dense, mode="distill_prune")
  with pytest.raises(ValueError, match="mode"):
    train.make_train_step(model, dense, mode="prune")
  with pytest.raises(ValueError, match="attention_loss 'cosine'"):
    train.make_train_step(model, dense, mode="distill", teacher=model, attention_loss="cosine")
  with pytest.raises(ValueError, match="learning rate"):
    jax.eval_shape(train.make_train_step(model, dense, mode="finetune"),
                   train.create_train_state(params, dense, jax.random.key(0)), None,
                   label_batch)
  _, metrics = trace("prune_labels", pruning)
  assert set(metrics) == LABEL_METRICS


def test_train_state_is_a_pytree_of_arrays():
  model = no_dropout(1)
  tx = worker.setup()["tx"]
  state = train.create_train_state(worker.random_params(model, 0), tx, jax.random.key(3))
  leaves = jax.tree.leaves(state)
  assert all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
  assert state.rng.dtype == jnp.uint32 and state.step.dtype == jnp.int32
  raw = train.create_train_state({}, optax.identity(), jax.random.key_data(jax.random.key(3)))
  np.testing.assert_array_equal(raw.rng, state.rng)


def test_kd_weight_schedules_switch_terms_off_at_the_boundary(label_batch):
  student, teacher = no_dropout(1), no_dropout(1)
  s_params, t_params = worker.random_params(student, 0), worker.random_params(teacher, 1)
  tx = optax.sgd(0.0)  # params stay put: only the weights change between steps
  until = lambda count: jnp.where(count < 2, 1.0, 0.0)
  weights = distill.KDWeights(attention=until, hidden=until, prediction=1.0, labels=0.5)
  step = jax.jit(train.make_train_step(student, tx, mode="distill", teacher=teacher,
                                       kd_weights=weights, learning_rate=0.0))
  state = train.create_train_state(s_params, tx, jax.random.key(0))
  losses = []
  for _ in range(3):
    state, m = step(state, t_params, label_batch)
    losses.append(m)
  assert set(losses[0]) == KD_METRICS | {"labels_loss"}
  for m in losses[:2]:  # counts 0 and 1: all four terms
    expected = (m["attention_loss"] + m["hidden_loss"] + m["prediction_loss"]
                + 0.5 * m["labels_loss"])
    assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5)
  m = losses[2]  # count 2: predictions and labels only, the terms still reported
  assert float(m["attention_loss"]) > 0 and float(m["hidden_loss"]) > 0
  assert float(m["loss"]) == pytest.approx(
      float(m["prediction_loss"] + 0.5 * m["labels_loss"]), rel=1e-5)


def test_hidden_map_in_the_params_is_trained_never_pruned_and_ignored_by_eval(label_batch):
  # A 1-layer, 16-wide, 2-head student and a 2-layer, 32-wide, 4-head teacher.
  student, teacher = no_dropout(1, hidden_size=16, num_attention_heads=2), no_dropout(2)
  s_params, t_params = worker.random_params(student, 0), worker.random_params(teacher, 1)
  hidden_map = distill.init_hidden_map(jax.random.key(2), 16, 32)
  params = {**s_params, distill.PARAMS_KEY: {"hidden_map": hidden_map}}
  tx = optax.chain(optax.sgd(0.1),
                   transforms.prune_by_magnitude(0.5, masks.BERT_ENCODER_MATRICES))
  step = jax.jit(train.make_train_step(student, tx, mode="distill_prune", teacher=teacher,
                                       learning_rate=0.1))
  state, m = step(train.create_train_state(params, tx, jax.random.key(0)), t_params,
                  label_batch)
  args = (label_batch["input_ids"], label_batch["attention_mask"],
          label_batch["token_type_ids"])
  outputs = dict(output_hidden_states=True, output_attention_scores=True)
  total, terms = distill.distillation_loss(
      student.apply({"params": s_params}, *args, **outputs),
      teacher.apply({"params": t_params}, *args, **outputs), weight=label_batch["weight"],
      hidden_map=hidden_map)
  assert float(m["loss"]) == pytest.approx(float(total), rel=1e-5)
  assert float(m["hidden_loss"]) == pytest.approx(float(terms["hidden"]), rel=1e-5)
  new_map = state.params[distill.PARAMS_KEY]["hidden_map"]
  assert not np.allclose(new_map["kernel"], hidden_map["kernel"])  # trained
  map_masks = transforms.find_masks(state.opt_state)[distill.PARAMS_KEY]["hidden_map"]
  assert all(bool(np.all(x)) for x in jax.tree.leaves(map_masks))  # never pruned
  model_params = distill.split_params(state.params)[0]
  np.testing.assert_array_equal(
      train.make_eval_step(student)(state.params, label_batch),
      student.apply({"params": model_params}, *args).logits)
