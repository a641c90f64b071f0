"""The README's main job: SparseBERT on SST-2 with MiniLM-L6, on a 2-core CPU, offline.

  make demo                     # = jaxprune --mode=demo --config=configs/demo.py
  jaxprune --mode=demo --config=configs/demo.py --workdir=runs/demo --config.prune.sparsity=0.95

1. Fine-tunes the pre-trained MiniLM-L6 (all-MiniLM-L6-v2 weights, a 6-layer 384-wide
   uncased BERT) on 20,000 SST-2 training sentences (1 epoch = 625 steps of 32, length
   <= 64, batches grouped by length with padding cut to a multiple of 16): the teacher.
2. Prunes a fresh copy of the pre-trained MiniLM-L6 to 90% sparsity of its 36 encoder
   matrices (cubic schedule, 100 mask events over the first 70% of 1,250 steps, then
   training at 90%) while distilling the teacher into it (attention scores + hidden
   states + soft logits), AdamW at 1e-4 with warmup and linear decay.
3. Evaluates both on the official SST-2 dev set (872 sentences) and prints a table;
   the pruned model is written as a Hugging Face directory (runs/demo/student/hf).

Measured (2-core CPU shared with other jobs, 2026-11-24): teacher 86.81% dev accuracy
(12.8 min), student at exactly 90.0% encoder sparsity 79.59% (19.5 min; 1,061,664 of
10,616,832 encoder weights left), 32 min in all (about 20 on an idle machine). The
student is 7.2 points behind: not yet the ~3 points this demo aims for.
"""

from jaxprune.config import demo_config


def get_config():
  return demo_config()
