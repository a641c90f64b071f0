"""The README's main job: SparseBERT on SST-2 with MiniLM-L6, on a 2-core CPU, offline.

  make demo                     # = jaxprune --mode=demo --config=configs/demo.py
  jaxprune --mode=demo --config=configs/demo.py --workdir=runs/demo --config.prune.sparsity=0.95

1. Fine-tunes the pre-trained MiniLM-L6 (all-MiniLM-L6-v2 weights, a 6-layer 384-wide
   uncased BERT) on a seeded 40,000-sentence subsample of SST-2's training set (half an
   epoch = 625 steps of 32, length <= 64, batches grouped by length with padding cut to
   a multiple of 16): the teacher.
2. Prunes a fresh copy of the pre-trained MiniLM-L6 to 90% sparsity of its 36 encoder
   matrices (cubic schedule, 100 mask events over the first half of 1,250 steps, then
   training at 90%) while distilling the teacher into it (attention scores + hidden
   states + soft logits), one pass over the 40,000 sentences, AdamW at 3e-4 with warmup
   and linear decay, no dropout.
3. Evaluates both on the official SST-2 dev set (872 sentences) and prints a table;
   the pruned model is written as a Hugging Face directory (runs/demo/student/hf).

Measured on the idle 2-core CPU (2026-11-24): teacher 87.04% dev accuracy (5.7 min),
student at exactly 90.0% encoder sparsity 84.40% (11.9 min; 1,061,664 of 10,616,832
encoder weights left): 2.64 points behind, 17.6 min in all.

How the student's settings were chosen (student runs alone against one teacher at
86.81%, final dev accuracy, one seed each: differences under ~0.5 point are noise):
  lr 1e-4, ramp over 70% of steps, 20,000 sentences x 2 epochs, dropout 0.1   79.59
  lr 2e-4, ramp over 50%                                                    82.91
    + attention/hidden MSEs averaged over real tokens (distill.mean_over)    82.34
    + KL x 2 prediction loss instead of the reference soft cross-entropy    83.14
  lr 3e-4, ramp over 50%                                                    83.14
    + 40,000 sentences x 1 epoch (same number of steps)                     83.83
    + no dropout                                                            84.06
"""

from jaxprune.config import demo_config


def get_config():
  return demo_config()
