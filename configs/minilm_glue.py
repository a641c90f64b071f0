"""CPU presets: SparseBERT with MiniLM-L6 on the small GLUE tasks (2-core CPU, offline).

  jaxprune --mode=finetune --config=configs/minilm_glue.py:task=mrpc --workdir=runs/mrpc-teacher
  jaxprune --mode=prune --config=configs/minilm_glue.py:task=mrpc \
      --workdir=runs/mrpc-sparse --config.teacher=runs/mrpc-teacher

Arguments (``file.py:key=value,...``): task (CoLA, SST-2, MRPC, STS-B, RTE, WNLI; QNLI,
MNLI and QQP need their train files), sparsity (default 0.9), subsample (training
examples, 0 = all), epochs (of the prune+distill run; default 10, CoLA 20, twice that
from 95% sparsity on), schedule (``task``, the default: twice the epochs from 95% on;
``plain``: the 90% schedule at every sparsity, as the study's grid; ``long``: twice at
every sparsity), terms (the distillation terms: ``task``, the default, is each task's
measured best, every term except on RTE, which distils the prediction only; ``all`` or
``prediction`` for every task), attention (the attention term: ``task``, the default, is
the KL of the attention distributions from 95% sparsity on and the reference's MSE of
the raw scores below; ``mse`` or ``kl`` at every sparsity).

The recipe (measured on MRPC, docs/recipes.md): the teacher is fine-tuned at lr 1e-4 for
5 epochs; the student is distilled at lr 3e-4 without dropout for 10 epochs, sparsity
ramping over the first half, with the gold-label cross-entropy added to the KL of the
predictions (T=1), the attention and hidden MSEs averaged over real tokens, and those
two terms switched off for the last 20% of the steps.

Measured results (2-core CPU, one seed, official dev metric; docs/recipes.md has every run):
  MRPC  teacher F1 86.29 / acc 80.15 (20 min); 90% student, this preset with seed 1:
        F1 84.60 / acc 76.72 (98.0% of the teacher's F1; majority class 81.22 / 68.38)
        in 24.6 min; seed 42 with 1,100 steps: 84.05 (97.4%); 1,500 steps: 85.02 (98.5%).
  CoLA  teacher MCC 30.63 (12.5 min); 90% student with 20 epochs (this preset) MCC 28.89
        (94.3%; last evaluation 27.40; constant baseline 0) in 35.0 min; with 10 epochs
        25.01 (81.7%) in 23.6 min. Below the 97% goal.
  RTE   teacher accuracy 57.04 (majority 52.71) in 24.5 min. With every distillation term
        (terms=all) the 90% student is at chance: seeds 0-2 51.14 ± 0.83 in the study,
        52.35 with 6 epochs (15.7 min), 49.10 on x4 augmented data (21 min). This preset
        distils the prediction only on RTE (the study's ablations traced the failure to the
        attention and hidden MSEs of this weak teacher): seeds 0-2 58.12, 56.68, 54.51,
        56.44 ± 1.82 (98.9%), 58-62 min each; above every-term on each seed, but seed 2
        predicted a constant from 63% sparsity to step 540 of 770 (train label loss at
        ln 2 = 0.693), then began to fit (last evaluation 50.90): if your run's label
        loss sits at 0.693 after the ramp, re-run with another seed.
  STS-B teacher Pearson 86.77 / Spearman 86.49 (12.9 min); 90% student 84.41 / 84.34
        (97.3% / 97.5%; constant baseline 0) in 36.7 min.
  SST-2 (the README demo, configs/demo.py: 40,000 sentences, 1 epoch) with this
        distillation: teacher 87.04, 90% student 85.89 (98.7%), 5.2 + 12.1 min idle.
The comparison study (docs/results.md, seed 0, 90%) ran this preset with terms=all as its
SparseBERT cells:
  RTE 51.62, MRPC 85.10, STS-B 83.48, CoLA 27.81, SST-2 (8,000-sentence subsample,
  teacher 87.16) 86.01: 95.0% of the teachers on the five-task average, against 91.1% for
  no-KD magnitude pruning of the teacher and 73.3% for an equal-size small dense student.
  With sparsity=0.95 (seed 0): RTE 54.15, MRPC 80.38, STS-B 78.23, CoLA 23.68, SST-2
  84.40, 90.5% of the teachers (magnitude pruning 83.9%, small dense 70.1%).
  Twice the training at 95% (sparsity=0.95, now this preset's default there): MRPC
  82.13 (95.2%, from 80.38; 111 min), STS-B 83.46 (96.2%, from 78.23, the 90% student's
  score; 95 min); RTE with every term stays at chance (51.26 against 54.15; 72 min), with
  the prediction only (this preset) it is not measured at 95%; SST-2's and CoLA's long
  cells have not run (docs/results.md).
  The attention KL on that long schedule (attention=task, this preset's default from 95%
  on): MRPC seeds 0-2 F1 85.25, 84.21, 84.84, 84.77 ± 0.52 (98.2%), 58-74 min each on
  the 2-core AMD EPYC; STS-B seed 0 Pearson 82.77 (95.4% of its teacher's 86.73; 0.69
  under the MSE's 83.46 on the same schedule), 100 min; SST-2 seed 0 accuracy 85.21
  (97.8% of 87.16; 84.40 on the 90% schedule with the MSE), 106 min of 5,000 steps;
  RTE and CoLA are queued in the study (its preset cells).
  Seeds 0-2 at 90%: MRPC F1 84.74 ± 0.31 (98.2%), RTE 51.14 ± 0.83 (below majority).
The previous preset (lr 1e-4, 5 epochs, reference soft cross-entropy, no gold labels)
collapsed to the majority class on MRPC.
"""

from jaxprune.config import base_config
from jaxprune.config import parse_arg
from jaxprune.config import student_recipe
from jaxprune.recipe import one_of

# Tasks whose student distils only the prediction (attention and hidden MSEs off), where
# that scored better than every term on each of seeds 0-2 (docs/results.md; RTE: 56.44 ±
# 1.82 against 51.14 ± 0.83).
PREDICTION_ONLY = ("RTE",)
TERMS = ("task", "all", "prediction")
# Student epochs where 10 are not enough (docs/recipes.md: CoLA MCC 25.01 -> 28.89).
EPOCHS = {"CoLA": 20.0}
# From this sparsity on, ``schedule=task`` trains twice as long (a ramp and a stay at the
# final sparsity twice as long; docs/results.md, the study's sparsebert_long cells).
LONG_FROM = 0.95
SCHEDULES = ("task", "plain", "long")
# From this sparsity on, ``attention=task`` distils the attention distributions (KL, as
# MiniLM) instead of the raw scores (MSE, the reference): MRPC at 95% on the long schedule,
# seeds 0-2: F1 84.77 ± 0.52 (98.2%, each seed >= 3.0 over the majority class) against the
# MSE's 82.13 on seed 0 (docs/recipes.md, the attention_kl_long lever); STS-B seed 0: 82.77
# against the MSE's 83.46 (one seed). Below 95% unmeasured.
KL_FROM = 0.95
ATTENTION = ("task", "mse", "kl")
# Sequence lengths that cover >= 99% of each task's pairs with MiniLM's tokenizer.
MAX_LEN = {"CoLA": 64, "SST-2": 64, "MRPC": 128, "STS-B": 128, "RTE": 128, "WNLI": 128,
           "QNLI": 128, "MNLI": 128, "QQP": 128}


def get_config(arg: str | None = None):
  args = parse_arg(arg, task="SST-2", sparsity=0.9, subsample=0, epochs=0.0, terms="task",
                   schedule="task", attention="task")
  from jaxprune.data import get_task
  task = get_task(args.task).name
  for name, allowed in (("terms", TERMS), ("schedule", SCHEDULES), ("attention", ATTENTION)):
    one_of(f"config argument {name}", args[name], allowed)
  long = args.schedule == "long" or (args.schedule == "task" and args.sparsity >= LONG_FROM)
  config = base_config()
  config.task = task
  config.max_seq_len = MAX_LEN.get(task, 128)
  config.trim_padding_to = 16
  config.group_by_length = 50
  config.train_subsample = args.subsample
  config.finetune.epochs = 5.0
  config.finetune.lr = 1e-4
  config.train.epochs = args.epochs or EPOCHS.get(task, 10.0) * (2 if long else 1)
  config.prune.sparsity = args.sparsity
  config = student_recipe(config)
  if args.terms == "prediction" or (args.terms == "task" and task in PREDICTION_ONLY):
    config.distill.attention_weight = config.distill.hidden_weight = 0.0
  kl = args.attention == "kl" or (args.attention == "task" and args.sparsity >= KL_FROM)
  config.distill.attention_loss = "kl" if kl else "mse"
  return config
