"""TSV reader: the real GLUE files (official counts, labels, exact rows) and bad input."""

import sys
from pathlib import Path

import numpy as np
import pytest

from jaxprune.data import DataError
from jaxprune.data import read_table
from jaxprune.data import read_tfds
from jaxprune.data import read_tsv
from conftest import FIXTURES, GLUE_DIR, needs_glue  # noqa: E402


# Official GLUE sizes (data rows) of the files in ../shared/data/glue.
OFFICIAL_SIZES = [
    ("CoLA", "train", 8551), ("CoLA", "dev", 1043), ("CoLA", "test", 1063),
    ("SST-2", "train", 67349), ("SST-2", "dev", 872), ("SST-2", "test", 1821),
    ("MRPC", "train", 3668), ("MRPC", "dev", 408), ("MRPC", "test", 1725),
    ("STS-B", "train", 5749), ("STS-B", "dev", 1500), ("STS-B", "test", 1379),
    ("RTE", "train", 2490), ("RTE", "dev", 277), ("RTE", "test", 3000),
    ("WNLI", "train", 635), ("WNLI", "dev", 71), ("WNLI", "test", 146),
    ("QNLI", "dev", 5463), ("QNLI", "test", 5463),
    ("AX", "test", 1104),
]

# Class counts in label order (e.g. MRPC: 0, 1; RTE/QNLI: entailment, not_entailment).
LABEL_COUNTS = {
    ("CoLA", "train"): [2528, 6023], ("CoLA", "dev"): [322, 721],
    ("SST-2", "train"): [29780, 37569], ("SST-2", "dev"): [428, 444],
    ("MRPC", "train"): [1194, 2474], ("MRPC", "dev"): [129, 279],
    ("RTE", "train"): [1249, 1241], ("RTE", "dev"): [146, 131],
    ("WNLI", "train"): [323, 312], ("WNLI", "dev"): [40, 31],
    ("QNLI", "dev"): [2702, 2761],
}


@needs_glue
@pytest.mark.parametrize("task, split, size", OFFICIAL_SIZES)
def test_official_row_counts(task, split, size):
  examples = read_tsv(GLUE_DIR, task, split)
  assert len(examples) == size
  assert len(examples.text_a) == size
  assert (examples.text_b is None) == (task in ("CoLA", "SST-2"))
  np.testing.assert_array_equal(examples.idx, np.arange(size))
  assert examples.has_labels == (split != "test")
  if split == "test":
    assert (np.isnan(examples.labels) if task == "STS-B" else examples.labels == -1).all()


@needs_glue
@pytest.mark.parametrize("task, split", sorted(LABEL_COUNTS))
def test_label_distributions(task, split):
  labels = read_tsv(GLUE_DIR, task, split).labels
  assert labels.dtype == np.int32
  assert np.bincount(labels).tolist() == LABEL_COUNTS[task, split]


@needs_glue
def test_stsb_scores():
  for split, mean in (("train", 2.70), ("dev", 2.36)):
    scores = read_tsv(GLUE_DIR, "STS-B", split).labels
    assert scores.dtype == np.float32
    assert scores.min() == 0.0 and scores.max() == 5.0
    assert abs(scores.mean() - mean) < 0.01


@needs_glue
def test_exact_examples():
  mrpc = read_tsv(GLUE_DIR, "MRPC", "train")
  assert mrpc[0].text_a == ("Amrozi accused his brother , whom he called \" the witness \" , "
                            "of deliberately distorting his evidence .")
  assert mrpc[0].text_b.startswith("Referring to him as only \" the witness \" , Amrozi")
  assert mrpc[0].label == 1 and mrpc[1].label == 0
  cola = read_tsv(GLUE_DIR, "CoLA", "dev")    # no header, no final newline
  assert cola[0] == ("The sailors rode the breeze clear of the rocks.", None, 1, 0)
  assert cola[-1].text_a == read_table(GLUE_DIR, "CoLA", "dev").rows[-1][3]
  assert read_tsv(GLUE_DIR, "CoLA", "test")[0] == ("Bill whistled past the house.", None, -1, 0)
  sst = read_tsv(GLUE_DIR, "SST-2", "dev")
  assert sst[0] == ("it 's a charming and often affecting journey . ", None, 1, 0)
  sts = read_tsv(GLUE_DIR, "STS-B", "train")
  assert sts[1].text_a == "A man is playing a large flute."
  assert sts[1].label == pytest.approx(3.8)
  rte = read_tsv(GLUE_DIR, "RTE", "dev")
  assert rte[0].text_b == "Christopher Reeve had an accident." and rte[0].label == 1
  ax = read_tsv(GLUE_DIR, "AX", "test")
  assert ax[0] == ("The cat sat on the mat.", "The cat did not sit on the mat.", -1, 0)


@needs_glue
def test_quotes_are_not_quoting():
  # QNLI dev rows 694, 3428, ... have a sentence starting with a lone '"'.
  qnli = read_tsv(GLUE_DIR, "QNLI", "dev")
  assert qnli[694].text_b.startswith('"')
  assert len(qnli) == 5463


@needs_glue
def test_bom_is_not_part_of_the_header():
  table = read_table(GLUE_DIR, "MRPC", "dev")
  assert table.columns == ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
  assert table.has_header and table.line(0) == 2


@needs_glue
def test_missing_split_file_names_it():
  with pytest.raises(DataError, match=r"QNLI/train\.tsv: no such file \(task QNLI, split "
                     r"train; present: dev\.tsv, test\.tsv\)"):
    read_tsv(GLUE_DIR, "QNLI", "train")


def test_fixture_quirks():
  mrpc = read_tsv(FIXTURES, "mrpc", "train")        # BOM header
  assert len(mrpc) == 6 and mrpc.labels.tolist() == [1, 0, 1, 0, 1, 0]
  cola = read_tsv(FIXTURES, "cola", "dev")          # headerless, no final newline
  assert [e.text_a for e in (cola[0], cola[1])] == [
      "The young teacher quickly read the long letter.", "Letter the read teacher young the."]
  assert read_table(FIXTURES, "cola", "train").line(0) == 1


def test_select_takes_rows():
  mrpc = read_tsv(FIXTURES, "MRPC", "train")
  part = mrpc.select([4, 1])
  assert part.text_a == (mrpc.text_a[4], mrpc.text_a[1])
  assert part.text_b == (mrpc.text_b[4], mrpc.text_b[1])
  assert part.labels.tolist() == [1, 0] and part.idx.tolist() == [4, 1]


# ------------------------------------------------------------------ bad input


def _write(root: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
  path = root / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding=encoding)
  return path


def _error(glue_dir, task, split) -> str:
  with pytest.raises(DataError) as e:
    read_tsv(glue_dir, task, split)
  message = str(e.value)
  assert "\n" not in message
  return message


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_missing_glue_dir(tmp_path):
  message = _error(tmp_path / "nowhere", "RTE", "train")
  assert message.startswith(f"{tmp_path / 'nowhere'}: GLUE directory does not exist")
  assert "RTE/train.tsv" in message


def test_missing_task_dir(tmp_path):
  message = _error(tmp_path, "RTE", "dev")
  assert message.startswith(f"{tmp_path / 'RTE'}: no such directory (task RTE")


def test_missing_file(tmp_path):
  _write(tmp_path, "RTE/train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n")
  message = _error(tmp_path, "RTE", "dev")
  assert message == (f"{tmp_path / 'RTE/dev.tsv'}: no such file (task RTE, split dev; "
                     "present: train.tsv)")


def test_wrong_column_count_names_line_and_columns(tmp_path):
  _write(tmp_path, "RTE/train.tsv",
         RTE_HEADER + "0\ta\tb\tentailment\n1\tonly one sentence\tnot_entailment\n")
  assert _error(tmp_path, "RTE", "train") == (
      f"{tmp_path / 'RTE/train.tsv'}:3: expected 4 tab-separated columns "
      "(index, sentence1, sentence2, label), got 3")


def test_wrong_column_count_in_headerless_file(tmp_path):
  _write(tmp_path, "CoLA/train.tsv", "x\t1\t\tFine.\nx\t0\tBroken\n")
  assert _error(tmp_path, "CoLA", "train") == (
      f"{tmp_path / 'CoLA/train.tsv'}:2: expected 4 tab-separated columns "
      "(source, label, mark, sentence), got 3")


def test_label_outside_the_label_set(tmp_path):
  _write(tmp_path, "RTE/dev.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tmaybe\n")
  assert _error(tmp_path, "RTE", "dev") == (
      f"{tmp_path / 'RTE/dev.tsv'}:3: label 'maybe' is not one of entailment, not_entailment")


def test_label_outside_the_label_set_with_bom(tmp_path):
  _write(tmp_path, "MRPC/train.tsv",
         "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n2\t3\t4\tc\td\n")
  assert _error(tmp_path, "MRPC", "train").endswith("train.tsv:3: label '2' is not one of 0, 1")


@pytest.mark.parametrize("score", ["5.5", "-0.1", "high", "", "nan"])
def test_regression_score_out_of_range(tmp_path, score):
  header = ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
            "sentence2\tscore\n")
  _write(tmp_path, "STS-B/dev.tsv", header + f"0\tg\tf\ty\t0\tn\tn\ta\tb\t{score}\n")
  assert _error(tmp_path, "STS-B", "dev") == (
      f"{tmp_path / 'STS-B/dev.tsv'}:2: score {score!r} is not a number in [0.0, 5.0]")


def test_empty_file(tmp_path):
  _write(tmp_path, "RTE/train.tsv", "")
  assert _error(tmp_path, "RTE", "train") == (
      f"{tmp_path / 'RTE/train.tsv'}: empty file (expected a header line, then rows)")
  _write(tmp_path, "CoLA/dev.tsv", "")
  assert _error(tmp_path, "CoLA", "dev").endswith(
      "empty file (expected rows of 4 tab-separated columns (source, label, mark, sentence))")


def test_header_without_rows(tmp_path):
  _write(tmp_path, "RTE/test.tsv", "index\tsentence1\tsentence2\n")
  assert _error(tmp_path, "RTE", "test") == (
      f"{tmp_path / 'RTE/test.tsv'}: no data rows after the header line")


def test_header_missing_a_column(tmp_path):
  _write(tmp_path, "RTE/train.tsv", "index\tpremise\tsentence2\tlabel\n0\ta\tb\tentailment\n")
  assert _error(tmp_path, "RTE", "train") == (
      f"{tmp_path / 'RTE/train.tsv'}:1: header has no column 'sentence1' (expected one with "
      "sentence1, sentence2, label; got index, premise, sentence2, label)")


def test_labelled_split_without_label_column(tmp_path):
  _write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n")
  assert "header has no column 'label'" in _error(tmp_path, "RTE", "dev")


def test_invalid_utf8_names_the_line(tmp_path):
  path = tmp_path / "RTE/train.tsv"
  path.parent.mkdir()
  path.write_bytes(RTE_HEADER.encode() + b"0\ta\tb\tentailment\n1\t\xff\tb\tentailment\n")
  assert _error(tmp_path, "RTE", "train").startswith(f"{path}:3: not valid UTF-8")


def test_unknown_task_and_split(tmp_path):
  assert _error(tmp_path, "GLUE-X", "train").startswith("unknown GLUE task 'GLUE-X' (known: CoLA")
  assert _error(tmp_path, "AX", "train") == "task AX has no split 'train' (known: test)"


def test_crlf_line_endings_are_accepted(tmp_path):
  _write(tmp_path, "RTE/train.tsv",
         (RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tnot_entailment\n").replace("\n", "\r\n"))
  assert read_tsv(tmp_path, "RTE", "train").labels.tolist() == [0, 1]


def test_tfds_reader_without_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(DataError, match=r"needs tensorflow-datasets: pip install 'jaxprune\[tfds\]'"):
    read_tfds("MRPC", "dev")
