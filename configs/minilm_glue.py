"""CPU presets: SparseBERT with MiniLM-L6 on the small GLUE tasks (2-core CPU, offline).

  jaxprune --mode=finetune --config=configs/minilm_glue.py:task=rte --workdir=runs/rte-teacher
  jaxprune --mode=prune --config=configs/minilm_glue.py:task=rte,sparsity=0.9 \
      --workdir=runs/rte-sparse --config.teacher=runs/rte-teacher

Arguments (``file.py:key=value,...``): task (CoLA, SST-2, MRPC, STS-B, RTE, WNLI; QNLI,
MNLI and QQP need their train files), sparsity (default 0.9), subsample (training
examples, 0 = all), epochs (of the prune+distill run).

Runtime on a 2-core CPU (MiniLM-L6, length-grouped batches of 32): about 0.3-0.5 s per
fine-tuning step and 0.5-0.8 s per prune+distill step at these lengths; RTE (2,490
pairs, length 128): ~8 min teacher + ~25 min student for 5 epochs. Expected result: not
measured for every task yet; the SST-2 figures of the README demo (configs/demo.py)
are the measured reference point.
"""

from jaxprune.config import base_config
from jaxprune.config import parse_arg

# Sequence lengths that cover >= 99% of each task's pairs with MiniLM's tokenizer.
MAX_LEN = {"CoLA": 64, "SST-2": 64, "MRPC": 128, "STS-B": 128, "RTE": 128, "WNLI": 128,
           "QNLI": 128, "MNLI": 128, "QQP": 128}


def get_config(arg: str | None = None):
  args = parse_arg(arg, task="SST-2", sparsity=0.9, subsample=0, epochs=5.0)
  from jaxprune.data import get_task
  task = get_task(args.task).name
  config = base_config()
  config.task = task
  config.max_seq_len = MAX_LEN.get(task, 128)
  config.trim_padding_to = 16
  config.group_by_length = 50
  config.train_subsample = args.subsample
  config.finetune.epochs = 3.0
  config.finetune.lr = 5e-5
  config.train.epochs = args.epochs
  config.train.lr = 1e-4
  config.prune.sparsity = args.sparsity
  config.prune.ramp_fraction = 0.7
  return config
