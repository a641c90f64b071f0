"""Bad inputs a user can give the CLI: each gets one line on stderr and exit code 2.

Every row of ``docs/bad-inputs.md`` is a case: its command is run in-process through the
same flag parser and ``main`` that the console script runs, and its message checked. After each, no
file is written or changed (so none is left half-written).
"""

import re
import shutil
from pathlib import Path

import pytest
from absl import flags

from jaxprune import main as main_lib
from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"

RTE_TRAIN = ("index\tsentence1\tsentence2\tlabel\n"
             "0\tA cat sat on the mat.\tA cat sat.\tentailment\n"
             "1\tIt rained all day.\tThe sun shone all day.\tmaybe\n")
SST2 = "sentence\tlabel\na fine film \t1\na dull film \t0\n"


def _glue(tmp: Path, task: str, name: str, text: str | None) -> Path:
  """A copy of the fixture GLUE folder with ``<task>/<name>`` replaced (None: removed)."""
  glue = tmp / "glue"
  if not glue.exists():
    shutil.copytree(FIXTURES, glue)
  (glue / task).mkdir(exist_ok=True)
  if text is None:
    (glue / task / name).unlink(missing_ok=True)
  else:
    (glue / task / name).write_text(text)
  return glue


def _mrpc_short_row(tmp):
  lines = (FIXTURES / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
  lines[2] = "\t".join(lines[2].split("\t")[:3])
  _glue(tmp, "MRPC", "train.tsv", "\ufeff" + "\n".join(lines) + "\n")
  return [f"--config.glue_dir={tmp}/glue"]


def _cola_bad_label(tmp):
  _glue(tmp, "CoLA", "train.tsv", "ab01\t1\t\tA fine sentence.\nab01\tx\t\tA bad label.\n")
  return ["--config.task=CoLA", f"--config.glue_dir={tmp}/glue"]


def _stsb_bad_score(tmp):
  text = (FIXTURES / "STS-B" / "train.tsv").read_text().splitlines()
  text[2] = "\t".join(text[2].split("\t")[:-1] + ["high"])
  _glue(tmp, "STS-B", "train.tsv", "\n".join(text) + "\n")
  _glue(tmp, "STS-B", "dev.tsv", (FIXTURES / "STS-B" / "train.tsv").read_text())
  return ["--config.task=STS-B", f"--config.glue_dir={tmp}/glue"]


def _rte_unknown_label(tmp):
  _glue(tmp, "RTE", "train.tsv", RTE_TRAIN)
  _glue(tmp, "RTE", "dev.tsv", RTE_TRAIN.replace("maybe", "entailment"))
  return ["--config.task=RTE", f"--config.glue_dir={tmp}/glue"]


def _sst2_missing_dev(tmp):
  _glue(tmp, "SST-2", "train.tsv", SST2)
  return ["--config.task=SST-2", f"--config.glue_dir={tmp}/glue"]


def _teacher_unfinished(tmp):
  (tmp / "teacher").mkdir()
  (tmp / "teacher" / "metrics.jsonl").write_text("")
  return ["--mode=prune", f"--config.teacher={tmp}/teacher"]


def _model_corrupt(tmp):
  from jaxprune.models import resolve
  model = tmp / "model"
  model.mkdir()
  for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
    if (resolve("minilm-l6") / name).is_file():
      shutil.copy(resolve("minilm-l6") / name, model / name)
  (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
  return [f"--config.model={model}"]


def _checkpoint_mismatch(tmp):
  assert _run("--mode=finetune", "--config=configs/tiny.py", f"--workdir={tmp}/run", "--config.finetune.num_steps=2",
              "--config.finetune.checkpoint_every=1")[0] == 0
  return ["--config.finetune.num_steps=2", "--config.model_overrides.hidden_size=48"]


def _resume_changed(tmp):
  _checkpoint_mismatch(tmp)
  return ["--config.finetune.num_steps=2", "--config.finetune.lr=0.5"]


def _workdir_file(tmp):
  (tmp / "run").write_text("not a folder")
  return []


def _empty_workdir(tmp):
  (tmp / "run").mkdir()
  return []


def _unfinished_run(tmp):
  (tmp / "run" / "checkpoints").mkdir(parents=True)
  return []


# Cases whose inputs are files: what each writes under <tmp> (returns extra flags).
SETUPS = {
    "mrpc_row": _mrpc_short_row,
    "cola_label": _cola_bad_label,
    "stsb_score": _stsb_bad_score,
    "rte_label": _rte_unknown_label,
    "sst2_dev": _sst2_missing_dev,
    "teacher_unfinished": _teacher_unfinished,
    "model_corrupt": _model_corrupt,
    "checkpoint": _checkpoint_mismatch,
    "resume_changed": _resume_changed,
    "workdir_file": _workdir_file,
    "export_empty": _empty_workdir,
    "eval_unfinished": _unfinished_run,
}
_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|[^|]*\|\s*`jaxprune ([^`]*)`.*\|\s*`(.*)`\s*\|$")


def _cases() -> list[tuple[str, list[str], str]]:
  """(case, flags, message) of every row of docs/bad-inputs.md."""
  rows = []
  for line in DOC.read_text().splitlines():
    if m := _ROW.match(line):
      rows.append((m[1], m[2].replace("\\|", "|").split(" "), m[3].replace("\\|", "|")))
  return rows


CASES = _cases()


def _run(*argv: str) -> tuple[int, str]:
  """The console script in-process: flag parsing then main; (exit code, stderr).

  ml_collections registers the ``--config.<field>`` override flags it finds in
  ``sys.argv`` while parsing; they are dropped before each run so that the next one
  registers its own.
  """
  import contextlib
  import io
  import sys
  for name in [n for n in list(flags.FLAGS) if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  err = io.StringIO()
  code = 0
  argv = ["jaxprune", *argv]
  with contextlib.redirect_stderr(err), _patched(sys, "argv", argv):
    try:
      main_lib.main(main_lib.parse_flags(argv))
    except SystemExit as e:
      code = e.code
  return code, err.getvalue()


class _patched:
  def __init__(self, obj, name, value):
    self.obj, self.name, self.value = obj, name, value

  def __enter__(self):
    self.old = getattr(self.obj, self.name)
    setattr(self.obj, self.name, self.value)

  def __exit__(self, *exc):
    setattr(self.obj, self.name, self.old)


def _files(root: Path) -> dict[str, int]:
  return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, tmp_path, minilm_dir, monkeypatch):
  name, args, message = case
  monkeypatch.chdir(ROOT)
  args = [a.replace("<tmp>", str(tmp_path)) for a in args]
  args += SETUPS[name](tmp_path) if name in SETUPS else []
  before = _files(tmp_path)
  code, stderr = _run(*args)
  lines = [l for l in stderr.splitlines() if l.startswith("jaxprune: error:")]
  assert code == 2, stderr[-3000:]
  assert "Traceback" not in stderr
  assert len(lines) == 1, stderr[-3000:]
  assert message.replace("<tmp>", str(tmp_path)) in lines[0]
  assert _files(tmp_path) == before  # nothing written, nothing half-written


def test_storage_out_of_reach_is_one_line_exit_2(monkeypatch):
  """A gs:// work directory the machine cannot reach (no network, a wrong emulator
  address) ends, after gcsfs's retries (~40 s), in aiohttp's ClientConnectorError, an
  OSError: one line and exit 2, not a traceback. Simulated here where the CLI first
  touches the work directory, to spare the test the retries."""
  from jaxprune import paths

  def unreachable(path):
    raise ConnectionRefusedError(111, "Cannot connect to host 127.0.0.1:9")

  monkeypatch.setattr(paths, "exists", unreachable)
  code, stderr = _run("--mode=export", "--workdir=gs://jaxprune-test/never-written")
  lines = [l for l in stderr.splitlines() if l.startswith("jaxprune: error:")]
  assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert lines == ["jaxprune: error: ConnectionRefusedError: [Errno 111] Cannot connect to "
                   "host 127.0.0.1:9"], stderr[-3000:]


def test_the_table_has_25_cases_or_more_and_every_setup_is_used():
  assert len(CASES) >= 25
  assert set(SETUPS) <= {c[0] for c in CASES}
