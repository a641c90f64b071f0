"""A tiny run for tests and smoke checks: a 1-layer, 32-wide random BERT on MRPC.

  jaxprune --mode=finetune --config=configs/tiny.py --workdir=/tmp/tiny-teacher
  jaxprune --mode=prune --config=configs/tiny.py --workdir=/tmp/tiny-student \
      --config.teacher=/tmp/tiny-teacher

Runtime: ~8-13 s per run on a 2-core CPU (mostly start-up and compilation). Result: meaningless
scores (64 training examples, random init); it exercises every part of the pipeline:
data, pruning to 50% over 12 steps, distillation, evaluation, checkpoints, export
(not TensorBoard nor run.png: add --config.tensorboard=True --config.plot=True).
Arguments: ``configs/tiny.py:steps=20,sparsity=0.8``.
"""

from jaxprune.config import base_config
from jaxprune.config import parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, steps=12, sparsity=0.5, task="MRPC")
  config = base_config()
  config.task = args.task
  # A randomly initialised architecture with MiniLM-L6's tokenizer and vocabulary.
  config.model = "random:minilm-l6"
  config.model_overrides.num_hidden_layers = 1
  config.model_overrides.hidden_size = 32
  config.model_overrides.num_attention_heads = 4
  config.model_overrides.intermediate_size = 64
  config.train_subsample = 64
  config.dev_subsample = 48
  config.max_seq_len = 32
  config.eval_batch_size = 16
  for section in (config.finetune, config.train):
    section.batch_size = 8
    section.num_steps = args.steps
    section.eval_every = args.steps // 2
    # Saved at steps 6 and 12 (and at each evaluation): a save costs ~0.5 CPU-s here, so a
    # checkpoint every 2 steps made a 12-step prune run ~25% dearer. Tests that stop and
    # resume a run mid-way ask for every 2 steps.
    section.checkpoint_every = 6
    section.log_every = 1
    section.lr = 1e-3
  config.prune.sparsity = args.sparsity
  config.prune.events = 4
  # No TensorBoard events and no run.png: a second or two of CPU per run, and the test
  # suite makes many (the tests of those outputs turn them on).
  config.tensorboard = config.plot = False
  return config
