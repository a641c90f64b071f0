"""TinyBERT-style data augmentation of a GLUE training split, written as ``train_aug.tsv``.

For every text of every training example, each eligible word gets a list of
replacement candidates; ``copies`` times, every such word is independently replaced by
a random candidate with probability ``prob``. Distinct new texts are kept (so a short
sentence can give fewer than ``copies``). As in TinyBERT, the text columns of a pair
are augmented one at a time: an example yields its original row, then one row per
distinct variant of its first text (second text unchanged), then one per variant of
its second text. Labels and every other column are copied, so the output has the
layout, header convention and columns of ``train.tsv`` and ``read_tsv(out_dir, task,
"train_aug")`` reads it. MRPC with the default 30 copies grows from 3,668 to ~220k rows.

Where this differs from TinyBERT's ``data_augmentation.py`` (on purpose):

* Words are whitespace tokens whose core (the token minus leading and trailing
  punctuation) is ASCII letters only and not one of TinyBERT's stop words; only the
  core is replaced, in the original case pattern (``Brother,`` -> ``Sister,``), and
  the rest of the text is kept byte for byte (TinyBERT lowercases and re-tokenizes the
  whole sentence).
* Candidates: when the checkpoint has a masked-LM head (``cls.predictions.*``), a
  single-wordpiece word gets the top-``candidates`` predictions for it masked, with
  TinyBERT's input ``[CLS] masked text [SEP] text [SEP]`` (transformers'
  PyTorch ``BertForMaskedLM``). Otherwise, and for checkpoints like MiniLM that have no
  head, the word gets the nearest neighbours of its wordpiece in the checkpoint's own
  input-embedding matrix by cosine similarity (the offline substitute for GloVe).
* Words of several wordpieces, for which TinyBERT looks up GloVe, are left unchanged
  by default (``multipiece="skip"``): the embedding matrix has no vector for the whole
  word, and neighbours of its first piece (``heart`` for ``heartrending``) mostly change
  the meaning. ``multipiece="first"`` uses them anyway.
* Candidates are whole-word vocabulary entries of two or more ASCII letters that are
  neither stop words nor the word itself: no ``##`` pieces, special or ``[unused]``
  tokens, punctuation or numbers (TinyBERT filters only ``##`` pieces).
* The original row appears once per example (TinyBERT writes it again, with the first
  text replaced by its last variant, before the second text's variants).

Randomness comes from ``numpy.random.default_rng([seed, row, column])``, so the output is
a pure function of the inputs and the seed, and a ``max_examples`` prefix gives a prefix
of the full output.

Example::

  augment_task("../shared/data/glue", "MRPC", "/tmp/aug", copies=10)
  read_tsv("/tmp/aug", "MRPC", "train_aug")      # ~80k examples

or from a shell::

  python -m jaxprune.data.augment --task=MRPC --glue_dir=../shared/data/glue \
      --out=/tmp/aug --copies=10
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from jaxprune import paths
from jaxprune.data.readers import read_table
from jaxprune.data.tasks import DataError
from jaxprune.data.tasks import TaskSpec
from jaxprune.data.tasks import get_task

__all__ = ["STOP_WORDS", "Replaceable", "AugmentResult", "load_word_embeddings",
           "has_mlm_head", "candidate_mask", "nearest_neighbours", "word_candidates",
           "augment_text", "augment_task", "augment_main"]

# TinyBERT's stop-word list (NLTK's English list without what/which/who/whom/when/
# where/why/how), alphabetic entries only: the only ones a word core can equal.
STOP_WORDS = frozenset("""
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves this
    that these those am is are was were be been being have has had having do does did
    doing a an the and but if or because as until while of at by for with about against
    between into through during before after above below to from up down in out on off
    over under again further then once here there all any both each few more most other
    some such no nor not only own same so than too very s t can will just don should now
    d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn
    needn shan shouldn wasn weren won wouldn
    """.split())

# A whitespace token: optional punctuation, a core of ASCII letters, optional punctuation.
_WORD = re.compile(r"[^\w\s]*([A-Za-z]+)[^\w\s]*")
_TOKEN = re.compile(r"\S+")


class Replaceable(NamedTuple):
  """A word of a text that may be replaced: ``text[start:end]`` and its candidates."""
  start: int
  end: int
  candidates: tuple[str, ...]


class AugmentResult(NamedTuple):
  """What ``augment_task`` wrote: the file, examples read, rows written, seconds taken."""
  path: Path
  num_examples: int
  num_rows: int
  seconds: float


# ------------------------------------------------------------------- checkpoint


def _tensor_names(model_dir: Path) -> list[str]:
  from safetensors import safe_open
  with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
    return list(f.keys())


def load_word_embeddings(model_dir: str | os.PathLike) -> np.ndarray:
  """The ``(vocab, hidden)`` input word-embedding matrix of a checkpoint's safetensors.

  Reads only that tensor (``embeddings.word_embeddings.weight``, with or without a
  ``bert.`` prefix) from ``model.safetensors``.
  """
  from safetensors import safe_open
  path = Path(model_dir) / "model.safetensors"
  if not path.is_file():
    raise DataError(f"{path}: no such file (expected the checkpoint's safetensors)")
  with safe_open(str(path), framework="np") as f:
    for key in ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight"):
      if key in f.keys():
        return f.get_tensor(key)
  raise DataError(f"{path}: no tensor embeddings.word_embeddings.weight "
                  f"(with or without a 'bert.' prefix)")


def has_mlm_head(model_dir: str | os.PathLike) -> bool:
  """Whether the checkpoint carries BERT's masked-LM head (``cls.predictions.*``)."""
  return any(k.startswith("cls.predictions.") for k in _tensor_names(Path(model_dir)))


def candidate_mask(tokenizer: Any) -> np.ndarray:
  """``(vocab,)`` bool: the tokens allowed as replacements.

  Whole words of two or more ASCII letters that are not stop words: this leaves out
  ``##`` continuation pieces, ``[CLS]``-style special and ``[unused]`` tokens,
  punctuation and numbers.
  """
  vocab = tokenizer.get_vocab()
  mask = np.zeros(max(vocab.values()) + 1, bool)
  word = re.compile(r"[A-Za-z]{2,}")
  special = set(tokenizer.all_special_tokens)
  for token, i in vocab.items():
    mask[i] = (word.fullmatch(token) is not None and token.lower() not in STOP_WORDS
               and token not in special)
  return mask


def nearest_neighbours(embeddings: np.ndarray, query_ids: Sequence[int], k: int, *,
                       allowed: np.ndarray | None = None, chunk_size: int = 512,
                       progress: bool = False) -> np.ndarray:
  """The ``k`` rows most cosine-similar to each query row, most similar first.

  Rows are L2-normalised once; similarities come from one matmul per chunk of queries
  against the whole vocabulary. A query never returns itself.

  Args:
    embeddings: ``(vocab, hidden)`` matrix.
    query_ids: rows to find neighbours of.
    k: neighbours per query.
    allowed: ``(vocab,)`` bool, the rows that may be returned (all when ``None``).
    chunk_size: queries per matmul.
    progress: show a progress bar.

  Returns:
    ``(len(query_ids), k)`` int64 row ids; ``-1`` fills rows when fewer than ``k`` are
    allowed.
  """
  emb = np.asarray(embeddings, np.float32)
  norms = np.linalg.norm(emb, axis=1, keepdims=True)
  emb = emb / np.where(norms > 0, norms, 1.0)
  query_ids = np.asarray(query_ids, np.int64)
  columns = np.arange(len(emb)) if allowed is None else np.flatnonzero(allowed)
  k_eff = min(k, len(columns))
  out = np.full((len(query_ids), k), -1, np.int64)
  if k_eff == 0:
    return out
  table = np.ascontiguousarray(emb[columns].T)            # (hidden, allowed rows)
  starts = range(0, len(query_ids), chunk_size)
  for start in tqdm(starts, desc="neighbours", unit="chunk", disable=not progress):
    ids = query_ids[start:start + chunk_size]
    sims = emb[ids] @ table
    at = np.minimum(np.searchsorted(columns, ids), len(columns) - 1)
    is_self = columns[at] == ids
    sims[np.flatnonzero(is_self), at[is_self]] = -np.inf
    top = np.argpartition(sims, len(columns) - k_eff, axis=1)[:, len(columns) - k_eff:]
    top_sims = np.take_along_axis(sims, top, axis=1)
    order = np.lexsort((top, -top_sims), axis=1)         # similarity desc, then id asc
    top, top_sims = (np.take_along_axis(x, order, axis=1) for x in (top, top_sims))
    out[start:start + len(ids), :k_eff] = np.where(np.isfinite(top_sims), columns[top], -1)
  return out


# ---------------------------------------------------------------- word candidates


class _Word(NamedTuple):
  start: int              # the core's characters in the text
  end: int
  pieces: list[int]       # its wordpiece ids
  position: int           # index of its first piece among the text's pieces


def _fit(mask: np.ndarray, n: int) -> np.ndarray:
  """``mask`` cut or padded with False to ``n`` entries (vocab vs. matrix rows)."""
  out = np.zeros(n, bool)
  out[:min(n, len(mask))] = mask[:n]
  return out


def _find_words(texts: Sequence[str], tokenizer: Any) -> tuple[list[list[int]],
                                                                 list[list[_Word]]]:
  """Per text: its wordpiece ids, and its eligible words (see the module doc)."""
  enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                  verbose=False)
  unk = tokenizer.unk_token_id
  words = []
  for t, text in enumerate(texts):
    ids, offsets = enc["input_ids"][t], enc["offset_mapping"][t]
    found, j = [], 0
    for token in _TOKEN.finditer(text):
      m = _WORD.fullmatch(token.group())
      if m is None or m.group(1).lower() in STOP_WORDS:
        continue
      start, end = token.start() + m.start(1), token.start() + m.end(1)
      while j < len(ids) and offsets[j][1] <= start:
        j += 1
      first, covered = j, start
      while j < len(ids) and offsets[j][0] == covered and offsets[j][1] <= end:
        covered = offsets[j][1]
        j += 1
      pieces = list(ids[first:j])
      if covered == end and pieces and unk not in pieces:
        found.append(_Word(start, end, pieces, first))
    words.append(found)
  return [list(ids) for ids in enc["input_ids"]], words


def _embedding_candidates(words: list[list[_Word]], model_dir: Path, allowed: np.ndarray,
                          k: int, use, progress: bool) -> list[list[np.ndarray | None]]:
  """Candidate ids from the embedding neighbours of the first piece of words ``use(w)``."""
  queries = sorted({w.pieces[0] for ws in words for w in ws if use(w)})
  if not queries:
    return [[None] * len(ws) for ws in words]
  embeddings = load_word_embeddings(model_dir)
  neighbours = nearest_neighbours(embeddings, queries, k, progress=progress,
                                  allowed=_fit(allowed, len(embeddings)))
  table = dict(zip(queries, neighbours))
  return [[table[w.pieces[0]] if use(w) else None for w in ws] for ws in words]


def _mlm_candidates(words: list[list[_Word]], pieces: list[list[int]], model_dir: Path,
                    tokenizer: Any, allowed: np.ndarray, k: int, batch_size: int,
                    progress: bool) -> list[list[np.ndarray | None]]:
  """Candidate ids for single-piece words from the checkpoint's masked-LM head."""
  try:
    torch = importlib.import_module("torch")
  except ImportError:
    raise DataError(f"{model_dir} has a masked-LM head, whose candidates need torch "
                    "(pip install torch==2.13.0); or pass source='embedding'") from None
  from transformers import BertForMaskedLM
  model = BertForMaskedLM.from_pretrained(str(model_dir)).eval()
  max_len = model.config.max_position_embeddings
  cls, sep, pad, mask_id = (tokenizer.cls_token_id, tokenizer.sep_token_id,
                            tokenizer.pad_token_id, tokenizer.mask_token_id)
  # One query per single-piece word, at its position after [CLS]; short texts first.
  queries = [(t, w, 1 + word.position) for t, ws in enumerate(words)
             for w, word in enumerate(ws) if len(word.pieces) == 1
             and 1 + word.position < max_len]
  queries.sort(key=lambda q: len(pieces[q[0]]))
  blocked = torch.from_numpy(~_fit(allowed, model.config.vocab_size))
  result = [[None] * len(ws) for ws in words]
  starts = range(0, len(queries), batch_size)
  with torch.no_grad():
    for start in tqdm(starts, desc="masked LM", unit="batch", disable=not progress):
      batch = queries[start:start + batch_size]
      seqs, segments = [], []
      for t, _, at in batch:
        masked = list(pieces[t])
        masked[at - 1] = mask_id
        # TinyBERT's input: [CLS] masked text [SEP] text [SEP], segments 0 then 1.
        seq = ([cls] + masked + [sep] + pieces[t] + [sep])[:max_len]
        seqs.append(seq)
        segments.append([0] * min(len(seq), len(masked) + 2)
                        + [1] * max(0, len(seq) - len(masked) - 2))
      width = max(len(s) for s in seqs)
      ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
      token_types = torch.tensor([y + [0] * (width - len(y)) for y in segments])
      attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
      hidden = model.bert(input_ids=ids, attention_mask=attention,
                          token_type_ids=token_types).last_hidden_state
      rows = torch.arange(len(batch))
      logits = model.cls(hidden[rows, torch.tensor([q[2] for q in batch])]).float()
      logits[:, blocked] = -torch.inf
      logits[rows, torch.tensor([words[t][w].pieces[0] for t, w, _ in batch])] = -torch.inf
      scores, top = torch.topk(logits, min(k, logits.shape[1]), dim=1)
      top[~torch.isfinite(scores)] = -1
      for (t, w, _), row in zip(batch, top.numpy()):
        result[t][w] = row
  return result


def word_candidates(texts: Sequence[str], model: str | os.PathLike = "minilm-l6", *,
                    candidates: int = 15, source: str = "auto", multipiece: str = "skip",
                    tokenizer: Any = None, batch_size: int = 64,
                    progress: bool = False) -> list[list[Replaceable]]:
  """The replaceable words of each text, with their candidates (see the module doc).

  Args:
    texts: the texts.
    model: a checkpoint name or directory (``jaxprune.models.resolve``).
    candidates: candidates per word (TinyBERT's ``M``).
    source: ``"mlm"`` (masked-LM head), ``"embedding"`` (input-embedding neighbours)
      or ``"auto"`` (``"mlm"`` when the checkpoint has a head).
    multipiece: words of several wordpieces are ``"skip"``-ped or get the neighbours
      of their ``"first"`` piece.
    tokenizer: the checkpoint's fast tokenizer, if already loaded.
    batch_size: sequences per masked-LM forward pass.
    progress: show progress bars.

  Returns:
    Per text, its ``Replaceable`` words in order (words without candidates left out).
  """
  from jaxprune.models import load_tokenizer, resolve
  if source not in ("auto", "mlm", "embedding"):
    raise ValueError(f"source={source!r}: expected 'auto', 'mlm' or 'embedding'")
  if multipiece not in ("skip", "first"):
    raise ValueError(f"multipiece={multipiece!r}: expected 'skip' or 'first'")
  model_dir = resolve(model)
  tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
  mlm = has_mlm_head(model_dir)
  if source == "mlm" and not mlm:
    raise DataError(f"{model_dir}: no masked-LM head (cls.predictions.*); "
                    "use source='embedding'")
  allowed = candidate_mask(tokenizer)
  pieces, words = _find_words(texts, tokenizer)

  def single(w: _Word) -> bool:
    return len(w.pieces) == 1

  def multi(w: _Word) -> bool:
    return len(w.pieces) > 1 and multipiece == "first"

  if source == "embedding" or (source == "auto" and not mlm):
    ids = _embedding_candidates(words, model_dir, allowed, candidates,
                                lambda w: single(w) or multi(w), progress)
  else:
    ids = _mlm_candidates(words, pieces, model_dir, tokenizer, allowed, candidates,
                          batch_size, progress)
    extra = _embedding_candidates(words, model_dir, allowed, candidates, multi, progress)
    ids = [[a if a is not None else b for a, b in zip(x, y)] for x, y in zip(ids, extra)]
  vocab = tokenizer.convert_ids_to_tokens
  result = []
  for ws, cs in zip(words, ids):
    row = []
    for w, c in zip(ws, cs):
      if c is not None and (c >= 0).any():
        row.append(Replaceable(w.start, w.end, tuple(vocab([int(i) for i in c if i >= 0]))))
    result.append(row)
  return result


# ------------------------------------------------------------------- sampling


def _match_case(word: str, candidate: str) -> str:
  if len(word) > 1 and word.isupper():
    return candidate.upper()
  if word[0].isupper():
    return candidate[0].upper() + candidate[1:]
  return candidate


def augment_text(text: str, words: Sequence[Replaceable], copies: int, prob: float,
                 rng: np.random.Generator) -> list[str]:
  """Up to ``copies`` distinct variants of ``text`` (never ``text`` itself).

  Each of ``copies`` draws replaces every word independently with probability
  ``prob`` by one of its candidates chosen uniformly, keeping the word's case pattern.
  """
  if not words or copies <= 0:
    return []
  replace = rng.random((copies, len(words))) < prob
  pick = rng.random((copies, len(words)))
  seen, variants = {text}, []
  for c in range(copies):
    parts, last = [], 0
    for j in np.flatnonzero(replace[c]):
      w = words[j]
      candidate = w.candidates[int(pick[c, j] * len(w.candidates))]
      parts += [text[last:w.start], _match_case(text[w.start:w.end], candidate)]
      last = w.end
    parts.append(text[last:])
    variant = "".join(parts)
    if variant not in seen:
      seen.add(variant)
      variants.append(variant)
  return variants


def _write_tsv(path: Any, header: Sequence[str] | None, rows) -> int:
  """Writes the rows whole or not at all (locally or to gs://: `paths.staged_file`)."""
  n = 0
  with paths.staged_file(path) as tmp:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
      if header is not None:
        f.write("\t".join(header) + "\n")
      for row in rows:
        f.write("\t".join(row) + "\n")
        n += 1
  return n


def augment_task(glue_dir: str | os.PathLike, task: str | TaskSpec,
                 out_dir: str | os.PathLike, *, model: str | os.PathLike = "minilm-l6",
                 copies: int | None = None, prob: float = 0.4, candidates: int = 15,
                 seed: int = 42, max_examples: int | None = None, source: str = "auto",
                 multipiece: str = "skip", progress: bool = True) -> AugmentResult:
  """Augments ``<glue_dir>/<TASK>/train.tsv`` into ``<out_dir>/<TASK>/train_aug.tsv``.

  Args:
    glue_dir: the GLUE directory to read ``train.tsv`` from.
    task: a task name or spec.
    out_dir: a GLUE-layout directory to write to (``read_tsv(out_dir, task,
      "train_aug")`` reads the result); the file is replaced atomically.
    model: checkpoint for tokenization and candidates (``jaxprune.models.resolve``).
    copies: draws per text (TinyBERT's ``N``); the task's default when ``None``
      (CoLA 30, MNLI 10, MRPC 30, SST-2 20, STS-B 30, QQP 10, QNLI 20, RTE 30).
    prob: probability of replacing each eligible word in a draw.
    candidates: candidates per word (TinyBERT's ``M``).
    seed: the output is a pure function of the inputs and this seed.
    max_examples: augment only the first examples (for a quick look).
    source: ``"auto"``, ``"mlm"`` or ``"embedding"`` (see ``word_candidates``).
    multipiece: ``"skip"`` or ``"first"`` (see ``word_candidates``).
    progress: show progress bars (tqdm, on stderr).

  Returns:
    ``AugmentResult(path, num_examples, num_rows, seconds)``.
  """
  began = time.perf_counter()
  spec = get_task(task)
  if "train" not in spec.train_splits:
    raise DataError(f"task {spec.name} has no training split to augment")
  if copies is None:
    copies = spec.augment_copies
    if copies is None:
      raise DataError(f"task {spec.name} has no default number of copies; pass copies")
  if copies < 0 or not 0.0 <= prob <= 1.0 or candidates < 1:
    raise ValueError(f"copies={copies}, prob={prob}, candidates={candidates}: expected "
                     "copies >= 0, 0 <= prob <= 1 and candidates >= 1")
  table = read_table(glue_dir, spec, "train")
  rows = table.rows if max_examples is None else table.rows[:max_examples]
  columns = [table.columns.index(c) for c in spec.text_columns]
  texts = sorted({row[c] for row in rows for c in columns})
  index = {t: i for i, t in enumerate(texts)}
  words = word_candidates(texts, model, candidates=candidates, source=source,
                          multipiece=multipiece, progress=progress)

  def augmented_rows():
    for r, row in enumerate(tqdm(rows, desc=f"augment {spec.name}", unit="ex",
                                 disable=not progress)):
      yield row
      for k, c in enumerate(columns):
        rng = np.random.default_rng([seed, r, k])
        for variant in augment_text(row[c], words[index[row[c]]], copies, prob, rng):
          yield row[:c] + [variant] + row[c + 1:]

  path = paths.path(out_dir) / spec.filename("train_aug")
  n = _write_tsv(path, table.columns if table.has_header else None, augmented_rows())
  return AugmentResult(path, len(rows), n, time.perf_counter() - began)


def augment_main(argv: Sequence[str] | None = None) -> int:
  """Command line: ``python -m jaxprune.data.augment --task=MRPC --glue_dir=... --out=...``.

  Returns the exit status (0); bad input exits with the ``DataError`` message.
  """
  parser = argparse.ArgumentParser(
      prog="python -m jaxprune.data.augment",
      description="TinyBERT-style augmentation of a GLUE train.tsv into train_aug.tsv.")
  parser.add_argument("--task", required=True, help="GLUE task, e.g. MRPC")
  parser.add_argument("--glue_dir", required=True, help="GLUE directory to read")
  parser.add_argument("--out", required=True, help="directory to write <TASK>/train_aug.tsv")
  parser.add_argument("--model", default="minilm-l6", help="checkpoint name or directory")
  parser.add_argument("--copies", type=int, default=None,
                      help="draws per text (default: the task's TinyBERT value)")
  parser.add_argument("--prob", type=float, default=0.4, help="replacement probability")
  parser.add_argument("--candidates", type=int, default=15, help="candidates per word")
  parser.add_argument("--seed", type=int, default=42)
  parser.add_argument("--max_examples", type=int, default=None)
  parser.add_argument("--source", choices=("auto", "mlm", "embedding"), default="auto")
  parser.add_argument("--multipiece", choices=("skip", "first"), default="skip")
  parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
  args = parser.parse_args(argv)
  try:
    result = augment_task(
        args.glue_dir, args.task, args.out, model=args.model, copies=args.copies,
        prob=args.prob, candidates=args.candidates, seed=args.seed,
        max_examples=args.max_examples, source=args.source, multipiece=args.multipiece,
        progress=not args.no_progress)
  except DataError as e:
    parser.exit(2, f"error: {e}\n")
  print(f"wrote {result.num_rows} rows from {result.num_examples} examples to "
        f"{result.path} in {result.seconds:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(augment_main())
