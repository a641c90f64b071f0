"""Tokenizing a split once, then cutting it into static-shape numpy batches.

``encode`` tokenizes a whole ``Examples`` split up front with the checkpoint's fast
tokenizer (pairs truncated longest-first to ``max_seq_len``, padded to exactly
``max_seq_len``) and keeps the arrays in memory. The batch iterators then only index
those arrays, so every batch has the same shapes and dtypes and jit compiles once:

* ``input_ids``, ``attention_mask``, ``token_type_ids``: ``(b, max_seq_len)`` int32;
* ``labels``: ``(b,)`` int32 (float32 for regression);
* ``weight``: ``(b,)`` float32, 1 for a real example and 0 for eval padding.

``b`` is the per-process batch: the ``rows`` of each global batch that this process's
devices hold (``jaxprune.sharding.batch_rows``: on a TPU slice these are several separate
blocks in topology order); by default, with ``process_count`` hosts, process
``process_index`` gets the ``process_index``-th of ``process_count`` contiguous slices.

Training order is a pure function of ``(seed, epoch)``: ``IteratorState(epoch,
position)`` (two ints, JSON-serialisable) says where to resume, so a restored run sees
exactly the batches an uninterrupted one would. The last incomplete training batch is
dropped; evaluation covers every example exactly once, padding the last batch with
zero-weight rows.

Example::

  data = encode(read_tsv(glue_dir, "MRPC", "train"), tokenizer, max_seq_len=128)
  for batch, state in train_batches(data, 32, seed=42, num_epochs=3):
    ...                                   # save state._asdict() with a checkpoint
  resumed = train_batches(data, 32, seed=42, num_epochs=3, state=IteratorState(**saved))
  for batch in eval_batches(encode(dev, tokenizer, 128), 64):
    ...                                   # metrics ignore rows with weight 0
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from jaxprune.data.readers import Examples

__all__ = ["IteratorState", "encode", "epoch_permutation", "length_grouped_order",
           "steps_per_epoch",
           "num_eval_batches", "train_batches", "eval_batches"]

Batch = dict[str, np.ndarray]


class IteratorState(NamedTuple):
  """Where a training iterator is: ``position`` global batches done in ``epoch``.

  Save it with ``state._asdict()`` (JSON) and restore with ``IteratorState(**d)``.
  """
  epoch: int = 0
  position: int = 0


def encode(examples: Examples, tokenizer: Any, max_seq_len: int = 128) -> Batch:
  """Tokenizes a whole split into fixed-length int32 arrays plus ``labels``.

  Runs the fast tokenizer's Rust backend once over the whole split (a private copy, so
  the caller's truncation and padding settings are untouched); the result equals
  ``tokenizer(a, b, truncation="longest_first", max_length=max_seq_len,
  padding="max_length")``.

  Args:
    examples: the split.
    tokenizer: a Hugging Face fast tokenizer (``jaxprune.models.load_tokenizer``).
    max_seq_len: length of every sequence, special tokens included; pairs are
      truncated longest-first (one token at a time from the longer text).

  Returns:
    ``{"input_ids", "attention_mask", "token_type_ids"}``: ``(n, max_seq_len)`` int32,
    and ``"labels"``: ``(n,)`` int32 or float32 (a copy of ``examples.labels``).
  """
  if max_seq_len < (3 if examples.text_b is not None else 2):
    raise ValueError(f"max_seq_len={max_seq_len} leaves no room for text")
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is None:
    raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer")
  from tokenizers import Tokenizer  # the tokenizer's own Rust library
  backend = Tokenizer.from_str(backend.to_str())
  backend.no_padding()
  backend.enable_truncation(max_seq_len, strategy="longest_first")
  inputs = (list(examples.text_a) if examples.text_b is None
            else list(zip(examples.text_a, examples.text_b)))
  run = getattr(backend, "encode_batch_fast", backend.encode_batch)  # fast: no offsets
  encodings = run(inputs)
  lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
  valid = np.arange(max_seq_len) < lengths[:, None]

  def gather(field: str, fill: int) -> np.ndarray:
    out = np.full((len(encodings), max_seq_len), fill, np.int32)
    out[valid] = np.fromiter(itertools.chain.from_iterable(getattr(e, field) for e in encodings),
                             np.int32, int(lengths.sum()))
    return out

  return {
      "input_ids": gather("ids", tokenizer.pad_token_id),
      "attention_mask": valid.astype(np.int32),
      "token_type_ids": gather("type_ids", tokenizer.pad_token_type_id),
      "labels": np.array(examples.labels),
  }


def _num_examples(data: Batch) -> int:
  n = {len(v) for v in data.values()}
  if len(n) != 1:
    raise ValueError(f"arrays of different lengths: { {k: len(v) for k, v in data.items()} }")
  return n.pop()


def _local_positions(global_batch_size: int, process_index: int, process_count: int,
                     rows: Any = None) -> np.ndarray:
  """This process's positions within each global batch (``rows``, else its contiguous
  slice)."""
  if global_batch_size < 1 or process_count < 1:
    raise ValueError(f"global_batch_size={global_batch_size} and "
                     f"process_count={process_count} must be positive")
  if rows is not None:
    rows = np.asarray(rows, np.int64)
    if rows.ndim != 1 or not len(rows) or rows.min() < 0 or rows.max() >= global_batch_size:
      raise ValueError(f"rows must be positions in [0, {global_batch_size}), got {rows}")
    return rows
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  local = global_batch_size // process_count
  return np.arange(process_index * local, (process_index + 1) * local)


def _take(data: Batch, rows: np.ndarray, weight: np.ndarray) -> Batch:
  batch = {k: v[rows] for k, v in data.items()}
  batch["weight"] = weight
  return batch


def batch_length(attention_mask: np.ndarray, multiple: int) -> int:
  """The length a batch is cut to: its longest row rounded up to ``multiple``, at most the
  full length. Computed from the GLOBAL batch, every process gets the same length."""
  full = attention_mask.shape[1]
  longest = int(attention_mask.sum(axis=1).max(initial=1))
  return min(full, -(-longest // multiple) * multiple)


def trim_padding(batch: Batch, multiple: int, length: int | None = None) -> Batch:
  """Cuts the all-padding tail columns of a batch, keeping lengths a multiple of ``multiple``.

  Few distinct lengths mean few compilations; short-sentence tasks (SST-2's median is 10
  tokens) then run several times faster. ``multiple=0`` returns the batch unchanged;
  ``length`` (from `batch_length` of the global batch) overrides this batch's own.
  """
  if not multiple:
    return batch
  if length is None:
    length = batch_length(batch["attention_mask"], multiple)
  return {k: v[:, :length] if v.ndim == 2 else v for k, v in batch.items()}


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Training batches per epoch: the last incomplete batch is dropped."""
  return num_examples // global_batch_size


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Evaluation batches: every example once, the last batch padded."""
  return -(-num_examples // global_batch_size)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of ``epoch``: a pure function of ``(seed, epoch)``."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def length_grouped_order(order: np.ndarray, lengths: np.ndarray, global_batch_size: int,
                         window: int, seed: int, epoch: int) -> np.ndarray:
  """``order`` regrouped so each global batch holds examples of similar length.

  Every run of ``window`` batches of ``order`` is sorted by length and cut into batches,
  then all full batches of the epoch are shuffled (from ``(seed, epoch)``), so batch
  composition stays random at the scale of a window while padding shrinks (see
  ``trim_padding`` in the trainer). The tail that does not fill a batch keeps its place
  at the end, to be dropped.
  """
  span = window * global_batch_size
  grouped = np.concatenate([
      chunk[np.argsort(-lengths[chunk], kind="stable")]
      for chunk in np.split(order, np.arange(span, len(order), span))]) if len(order) else order
  full = len(order) // global_batch_size * global_batch_size
  batches = grouped[:full].reshape(-1, global_batch_size)
  shuffled = batches[np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]
  return np.concatenate([shuffled.reshape(-1), grouped[full:]])


def train_batches(data: Batch, global_batch_size: int, *, seed: int,
                  state: IteratorState | None = None, num_epochs: int | None = None,
                  shuffle: bool = True, process_index: int = 0, process_count: int = 1,
                  group_by_length: int = 0, trim_to: int = 0, rows: Any = None
                  ) -> Iterator[tuple[Batch, IteratorState]]:
  """Yields ``(batch, state)`` training batches, ``state`` being where to resume after it.

  Each epoch is a fresh permutation drawn from ``(seed, epoch)``; the remainder that
  does not fill a global batch is dropped. Starting from a saved ``state`` yields
  exactly the batches that followed it in the original run.

  Args:
    data: arrays from ``encode`` (any dict of equally long arrays works).
    global_batch_size: examples per step over all processes.
    seed: shuffling seed.
    state: where to start; ``None`` or ``IteratorState()`` is the beginning.
    num_epochs: stop after this epoch count (counted from epoch 0); ``None``: never.
    shuffle: ``False`` keeps file order (for debugging).
    process_index: this process (``jax.process_index()``).
    process_count: number of processes (``jax.process_count()``).
    group_by_length: if > 0, batches of similar lengths (`length_grouped_order` over
      windows of this many batches; needs ``attention_mask`` in ``data``).
    trim_to: if > 0, cut each batch's padding (`trim_padding`) to a length derived
      from the whole global batch, so that every process cuts its rows the same way.
    rows: this process's positions within each global batch
      (``jaxprune.sharding.batch_rows``); overrides ``process_index``/``process_count``.
  """
  positions = _local_positions(global_batch_size, process_index, process_count, rows)
  n = _num_examples(data)
  lengths = data["attention_mask"].sum(axis=1) if group_by_length else None
  steps = steps_per_epoch(n, global_batch_size)
  if steps == 0:
    raise ValueError(f"{n} examples do not fill one batch of {global_batch_size}")
  state = IteratorState() if state is None else state
  epoch, first = int(state.epoch), int(state.position)
  if epoch < 0 or not 0 <= first < steps:
    raise ValueError(f"{state} does not fit {steps} batches per epoch")
  weight = np.ones((len(positions),), np.float32)
  while num_epochs is None or epoch < num_epochs:
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    if group_by_length:
      order = length_grouped_order(order, lengths, global_batch_size, group_by_length, seed,
                                   epoch)
    for position in range(first, steps):
      start = position * global_batch_size
      following = (IteratorState(epoch, position + 1) if position + 1 < steps
                   else IteratorState(epoch + 1, 0))
      batch = _take(data, order[start + positions], weight)
      if trim_to:
        rows = order[position * global_batch_size:(position + 1) * global_batch_size]
        batch = trim_padding(batch, trim_to,
                             batch_length(data["attention_mask"][rows], trim_to))
      yield batch, following
    epoch, first = epoch + 1, 0


def eval_batches(data: Batch, global_batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, rows: Any = None) -> Iterator[Batch]:
  """Yields evaluation batches in order, covering every example exactly once.

  The last global batch is filled up with copies of example 0 whose ``weight`` is 0,
  so shapes stay static and metrics can drop the padding. Every process gets
  ``num_eval_batches(n, global_batch_size)`` batches (some may be all padding); ``rows``
  and ``process_index``/``process_count`` say which rows of each, as in `train_batches`.
  """
  positions = _local_positions(global_batch_size, process_index, process_count, rows)
  n = _num_examples(data)
  if n == 0:
    return
  for b in range(num_eval_batches(n, global_batch_size)):
    index = b * global_batch_size + positions
    real = index < n
    yield _take(data, np.where(real, index, 0), real.astype(np.float32))
