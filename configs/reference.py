"""The SparseBERT reference recipe (Xu et al., NAACL 2021) for BERT-base, on GPU/TPU.

  jaxprune --mode=finetune --config=configs/reference.py:task=mrpc --workdir=runs/mrpc-teacher
  jaxprune --mode=prune --config=configs/reference.py:task=mrpc,sparsity=0.95 \
      --workdir=runs/mrpc-sparse --config.teacher=runs/mrpc-teacher

What it reproduces (../shared/REFERENCE.md): student = pre-trained bert-base-uncased,
teacher = the same fine-tuned on the task; BertAdam (no bias correction, per-tensor
clipping to 1.0, decoupled weight decay 0.01, CONSTANT lr 3e-5), batch 32, length 128,
seed 42, MRPC 12 epochs / QNLI 5 epochs (others: 3); per-matrix top-k with ties kept,
cubic schedule over all steps with ~100 events in the reference's arithmetic (the last
event can stop short of the target); attention-score + hidden-state + soft cross-entropy
(mean over batch and classes, T=1) distillation summed with weight 1; the teacher in
training mode (dropout on) and ReLU after the pooler in both models; no padding trim.
TinyBERT augmentation: run ``jaxprune --mode=augment`` first and add
``--config.train_split=train_aug --config.aug_dir=<its workdir>``.

Hardware and runtime: BERT-base is ~2.2 s per step on a 2-core CPU, so this is for a
GPU or TPU (MRPC, 12 epochs without augmentation: 1,375 steps, minutes on one
accelerator). Expected result (paper, GLUE dev, 95% sparsity, with augmentation): MRPC
F1 88.5, QNLI acc 90.6, RTE acc 69.1, CoLA MCC 52.1. Not measured here (needs
bert-base-uncased weights from the hub and an accelerator).
"""

from jaxprune.config import base_config
from jaxprune.config import parse_arg

EPOCHS = {"MRPC": 12.0, "QNLI": 5.0}


def get_config(arg: str | None = None):
  args = parse_arg(arg, task="MRPC", sparsity=0.95, model="bert-base-uncased")
  from jaxprune.data import get_task
  task = get_task(args.task).name
  config = base_config()
  config.task = task
  config.model = args.model
  config.max_seq_len = 128
  config.seed = 42
  for section in (config.finetune, config.train):
    section.batch_size = 32
    section.optimizer = "bert_adam"
    section.lr = 3e-5
    section.weight_decay = 0.01
    section.clip_norm = 1.0
    section.dropout = 0.1
  config.finetune.lr = 5e-5  # the teacher is fine-tuned the usual way
  config.finetune.optimizer = "adamw"
  config.finetune.epochs = 3.0
  config.train.epochs = EPOCHS.get(task, 3.0)
  config.prune.sparsity = args.sparsity
  config.prune.schedule = "reference"
  config.prune.ramp_fraction = 1.0
  config.prune.events = 100
  config.prune.keep_ties = True
  config.distill.attention_weight = 1.0
  config.distill.hidden_weight = 1.0
  config.distill.prediction_weight = 1.0
  config.distill.temperature = 1.0
  config.distill.prediction_loss = "reference"
  config.distill.mean_over = "all"  # padding included in the MSE means
  config.distill.teacher_dropout = True
  config.distill.classifier_relu = True
  return config
