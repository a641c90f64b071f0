"""jaxprune.recipe: config names and numbers -> optimizer, pruning, schedules, KD weights."""

import jax.numpy as jnp
import optax
import pytest

from jaxprune import distill, masks, recipe, transforms
from jaxprune.config import ConfigError, base_config, validate


@pytest.mark.parametrize("name, expected", [
    ("unstructured", None), ("2:4", masks.NM(2, 4)), ("1:8", masks.NM(1, 8)),
    ("block:4x2", masks.Blocks(4, 2))])
def test_pattern_names(name, expected):
  assert recipe.pattern(name) == expected


@pytest.mark.parametrize("name", ["4:2", "0:4", "2-4", "block:0x4", "blocks:4x4", ""])
def test_bad_patterns_are_config_errors(name):
  with pytest.raises(ConfigError, match="prune.pattern"):
    recipe.pattern(name)


def test_one_of_lists_the_allowed_values():
  with pytest.raises(ConfigError, match=r"^x='c': expected 'a' or 'b'$"):
    recipe.one_of("x", "c", ("a", "b"))
  with pytest.raises(ConfigError, match=r"^x=3: expected one of 1, 2, 4$"):
    recipe.one_of("x", 3, (1, 2, 4))


def test_prune_mode_builds_a_chain_ending_with_pruning_and_the_ramp():
  config = base_config()
  config.prune.ramp_fraction = 0.5
  config.prune.events = 10
  run = recipe.build(config, "prune", total_steps=200)
  assert run.mode == "distill_prune" and run.where == masks.BERT_ENCODER_MATRICES
  assert run.sparsity.event_steps[-1] == 100 and run.sparsity.final_sparsity == 0.9
  params = {"bert": {"encoder": {"layer": {"0": {"intermediate": {"dense": {
      "kernel": jnp.ones((4, 8))}}}}}}}
  state = run.tx.init(params)
  assert transforms.find_masks(state) is not None  # the chain holds the masks
  finetune = recipe.build(config, "finetune", total_steps=200)
  assert finetune.sparsity is None and finetune.mode == "finetune"


def test_kd_weights_switch_intermediate_terms_off_after_the_fraction():
  config = base_config()
  config.distill.label_weight = 0.5
  assert recipe.kd_weights(config.distill, 100) == distill.KDWeights(1.0, 1.0, 1.0, 0.5)
  config.distill.intermediate_until = 0.8
  w = recipe.kd_weights(config.distill, 100)
  assert [float(w.attention(c)) for c in (0, 79, 80, 99)] == [1.0, 1.0, 0.0, 0.0]
  assert float(w.hidden(79)) == 1.0 and float(w.hidden(80)) == 0.0
  assert w.prediction == 1.0 and w.labels == 0.5
  config.distill.attention_weight = 0.0  # a switched-off term stays statically off
  assert recipe.kd_weights(config.distill, 100).attention == 0.0
  config.distill.attention_loss = "cosine"
  with pytest.raises(ConfigError, match=r"^distill.attention_loss='cosine': expected 'mse' or 'kl'$"):
    recipe.kd_weights(config.distill, 100)


def test_bert_adam_has_a_constant_rate_and_adamw_a_schedule():
  config = base_config()
  config.train.optimizer = "bert_adam"
  tx, lr, _ = recipe.make_optimizer(config.train, 100)
  assert lr == config.train.lr and isinstance(tx, optax.GradientTransformation)
  config.train.optimizer = "adamw"
  _, lr, _ = recipe.make_optimizer(config.train, 100)
  assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(config.train.lr)


def test_validate_checks_pruning_settings_in_finetune_mode_too():
  config = base_config()
  config.prune.scope = "everywhere"
  with pytest.raises(ConfigError, match="prune.scope='everywhere'"):
    validate(config, "finetune")
  config = base_config()
  config.finetune.warmup_ratio = 1.5
  with pytest.raises(ConfigError, match=r"^finetune.warmup_ratio=1.5"):
    validate(config, "finetune")
