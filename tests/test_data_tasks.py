"""The GLUE task registry: names, labels, metrics, splits and file names."""

import pytest

from jaxprune.data import TASKS
from jaxprune.data import DataError
from jaxprune.data import get_task
from jaxprune.data import task_names


def test_every_glue_task_is_registered():
  assert task_names() == ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE",
                          "WNLI", "AX")


@pytest.mark.parametrize("alias, name", [
    ("cola", "CoLA"), ("SST2", "SST-2"), ("sst-2", "SST-2"), ("sts_b", "STS-B"),
    ("stsb", "STS-B"), ("Mnli", "MNLI"), ("diagnostic", "AX"), ("ax", "AX"),
])
def test_lookup_ignores_case_dashes_and_underscores(alias, name):
  assert get_task(alias).name == name
  assert get_task(get_task(alias)) is TASKS[name]
  assert {get_task(alias): 1}[TASKS[name]] == 1        # hashable (a jit static argument)


def test_unknown_task_lists_the_known_ones():
  with pytest.raises(DataError, match="unknown GLUE task 'SQuAD'") as e:
    get_task("SQuAD")
  for name in task_names():
    assert name in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, metrics", [
    ("CoLA", ("mcc",)), ("STS-B", ("pearson", "spearman")), ("MRPC", ("f1", "accuracy")),
    ("QQP", ("accuracy", "f1")), ("SST-2", ("accuracy",)), ("MNLI", ("accuracy",)),
    ("QNLI", ("accuracy",)), ("RTE", ("accuracy",)), ("WNLI", ("accuracy",)),
    ("AX", ("mcc",)),
])
def test_official_metrics(name, metrics):
  assert get_task(name).metrics == metrics


def test_labels_and_regression():
  assert [n for n in task_names() if get_task(n).is_regression] == ["STS-B"]
  assert get_task("STS-B").num_labels == 1
  assert get_task("STS-B").label_range == (0.0, 5.0)
  assert get_task("MNLI").labels == ("contradiction", "entailment", "neutral")
  assert get_task("QNLI").labels == get_task("RTE").labels == ("entailment", "not_entailment")
  for name in ("CoLA", "SST-2", "MRPC", "QQP", "WNLI"):
    assert get_task(name).labels == ("0", "1")


@pytest.mark.parametrize("name", [n for n in task_names() if n != "STS-B"])
def test_tfds_labels_are_a_permutation_of_ours(name):
  spec = get_task(name)
  assert sorted(spec.tfds_labels) == sorted(spec.labels)
  assert len(spec.tfds_text_features) == len(spec.text_columns)


def test_splits_and_files():
  mnli = get_task("MNLI")
  assert mnli.dev_splits == ("dev_matched", "dev_mismatched")
  assert mnli.filename("dev_mismatched") == "MNLI/dev_mismatched.tsv"
  assert get_task("AX").splits == ("test",)
  assert get_task("AX").filename("test") == "diagnostic/diagnostic.tsv"
  assert get_task("CoLA").filename("train_aug") == "CoLA/train_aug.tsv"
  assert get_task("RTE").is_labelled("dev") and not get_task("RTE").is_labelled("test")
  with pytest.raises(DataError, match=r"task MRPC has no split 'validation' \(known: train, "
                     r"train_aug, dev, test\)"):
    get_task("MRPC").filename("validation")


def test_file_quirks():
  cola = get_task("CoLA")
  assert cola.headerless_splits == ("train", "train_aug", "dev")
  assert cola.headerless_columns == ("source", "label", "mark", "sentence")
  assert all(not get_task(n).headerless_splits for n in task_names() if n != "CoLA")


def test_tinybert_augmentation_defaults():
  copies = {n: get_task(n).augment_copies for n in task_names()}
  assert copies == {"CoLA": 30, "SST-2": 20, "MRPC": 30, "STS-B": 30, "QQP": 10, "MNLI": 10,
                    "QNLI": 20, "RTE": 30, "WNLI": None, "AX": None}
