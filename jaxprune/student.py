"""The student of a prune run, cut to size: ``config.student`` applied to the pre-trained
model (``models.shrink``) and, when it ends narrower than its teacher, TinyBERT's learned
hidden map ``W_h`` added to its params (``distill.init_hidden_map``).

Example::

  student, params, student_config, kept = shrink_student(config.student, params, cfg)
  params = add_hidden_map(params, student_config, teacher_config, config.distill, kept,
                          base_hidden=cfg.hidden_size, seed=config.seed)
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections

from jaxprune import distill
from jaxprune import models
from jaxprune.errors import ConfigError

__all__ = ["add_hidden_map", "shrink_student"]

log = logging.getLogger(__name__)


def shrink_student(sizes: ml_collections.ConfigDict, params: Any, model_config: Any
                   ) -> tuple[Any, Any, Any, Any]:
  """``config.student`` applied to the pre-trained student (``models.shrink``): returns
  ``(model, params, config, kept hidden dimensions or None)``."""
  if not any(sizes[k] for k in ("layers", "heads", "intermediate", "hidden")):
    return models.BertForSequenceClassification(model_config), params, model_config, None
  try:
    plan = models.plan_shrink(params, model_config, **{
        k: sizes[k] or None for k in ("layers", "heads", "intermediate", "hidden")})
  except ValueError as e:
    raise ConfigError(f"student: {e}") from None
  params, model_config = models.apply_plan(params, model_config, plan)
  log.info("student shrunk to %d layers x %d wide, %d heads, FFN %d (%d encoder weights)",
           model_config.num_hidden_layers, model_config.hidden_size,
           model_config.num_attention_heads, model_config.intermediate_size,
           models.encoder_weight_count(model_config))
  return models.BertForSequenceClassification(model_config), params, model_config, plan.hidden


def add_hidden_map(params: Any, student: Any, teacher: Any, kd: ml_collections.ConfigDict,
                   kept: Any, base_hidden: int, seed: int) -> Any:
  """The student's params with TinyBERT's W_h (``distill.init_hidden_map``) when the
  widths differ and the hidden term is on; checks the layer and head counts."""
  layers = (student.num_hidden_layers, teacher.num_hidden_layers)
  heads = (student.num_attention_heads, teacher.num_attention_heads)
  if (kd.attention_weight or kd.hidden_weight) and layers[1] % layers[0]:
    raise ConfigError(f"teacher layers {layers[1]} are not a multiple of student "
                      f"layers {layers[0]}: the layer map needs k = teacher/student")
  if kd.attention_weight and heads[1] % heads[0]:
    raise ConfigError(f"teacher heads {heads[1]} are not a multiple of student "
                      f"heads {heads[0]}: attention distillation averages groups")
  if not kd.hidden_weight or student.hidden_size == teacher.hidden_size:
    return params
  kept = kept if base_hidden == teacher.hidden_size else None  # cut from the teacher's width
  hidden_map = distill.init_hidden_map(jax.random.key(seed), student.hidden_size,
                                       teacher.hidden_size, kept)
  return {**params, distill.PARAMS_KEY: {"hidden_map": hidden_map}}
