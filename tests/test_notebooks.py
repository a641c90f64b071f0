"""The Colab notebooks (colab/*.ipynb): executed in smoke mode, committed without outputs,
in sync with their jupytext py:percent sources, with a badge and a parameters cell.

Each ``colab/<name>.py`` (py:percent) is the source of ``colab/<name>.ipynb``; after
editing it, regenerate the notebook with ``jupytext --to ipynb colab/<name>.py``.

The execution tests run every notebook with nbclient in a kernel of this interpreter
(a kernelspec written for the test, so a ``python3`` kernel registered elsewhere on the
machine is never picked), papermill style: a cell injected after the ``parameters``
cell sets ``SMOKE = True`` (and ``SOURCE = "offline"``). A cell put first refuses any
connection off this machine, so a notebook that reaches for the network fails here.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GLUE_DIR, cpu_env

nbformat = pytest.importorskip("nbformat", reason="needs the test extra (nbformat)")
jupytext = pytest.importorskip("jupytext", reason="needs the test extra (jupytext)")

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KERNEL = "jaxprune-notebook-test"

# What smoke runs set in the parameters (only names the notebook's parameters cell has).
SMOKE_PARAMETERS = {"SMOKE": True, "SOURCE": "offline"}

# Put first in every executed notebook: no connection leaves the machine.
NO_NETWORK = '''\
import socket as _socket

_connect, _connect_ex = _socket.socket.connect, _socket.socket.connect_ex


def _local_only(method):
  def connect(self, address):
    if self.family in (_socket.AF_INET, _socket.AF_INET6) and address[0] not in (
        "127.0.0.1", "::1", "localhost"):
      raise OSError(f"a notebook under test tried to reach the network: {address}")
    return method(self, address)
  return connect


_socket.socket.connect = _local_only(_connect)
_socket.socket.connect_ex = _local_only(_connect_ex)
'''


def _read(path: Path):
  return nbformat.read(path, as_version=4)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def _parameters_cells(nb):
  return [c for c in _code_cells(nb) if "parameters" in c.metadata.get("tags", [])]


def _assigned(source: str) -> dict[str, object]:
  """Names assigned a literal at the top level of a cell, with their values."""
  out = {}
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      try:
        out[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        out[node.targets[0].id] = None
  return out


def _repo_url(nb) -> str:
  install = _code_cells(nb)[0].source
  urls = re.findall(r'^REPO_URL = "([^"]+)"', install, re.M)
  assert len(urls) == 1, "the install cell must define REPO_URL once"
  return urls[0]


def _colab_link(repo_url: str, name: str) -> str:
  repo = repo_url.removeprefix("https://github.com/").rstrip("/")
  return f"https://colab.research.google.com/github/{repo}/blob/main/colab/{name}"


# ------------------------------------------------------------------ static checks


def test_every_notebook_has_its_py_percent_source():
  assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "sparsebert_glue"}
  sources = {p.stem for p in COLAB.glob("*.py")}
  assert sources == {p.stem for p in NOTEBOOKS}, "each colab/<name>.ipynb pairs a <name>.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path):
  nb = _read(path)
  nbformat.validate(nb)
  for i, cell in enumerate(_code_cells(nb)):
    assert cell.outputs == [] and cell.execution_count is None, (
        f"{path.name} code cell {i} has outputs: clear them (jupytext --to ipynb "
        f"colab/{path.stem}.py regenerates it clean)")
  assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_in_sync_with_its_py_percent_source(path):
  """Compared through jupytext reading both files: same cells, sources and tags."""
  source = path.with_suffix(".py")
  assert "# %%" in source.read_text(), f"{source.name} is not in the py:percent format"

  def cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", [])))
            for c in nb.cells]

  from_py, from_ipynb = jupytext.read(source), jupytext.read(path)
  assert cells(from_py) == cells(from_ipynb), (
      f"{path.name} differs from {source.name}: run jupytext --to ipynb colab/{source.name}")
  assert from_py.metadata.get("kernelspec") == from_ipynb.metadata.get("kernelspec")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_badge_install_cell_and_parameters(path):
  nb = _read(path)
  first = nb.cells[0]
  repo_url = _repo_url(nb)
  assert first.cell_type == "markdown" and BADGE in first.source
  assert _colab_link(repo_url, path.name) in first.source, "the badge opens this notebook"
  install = _code_cells(nb)[0].source
  assert 'f"git+{REPO_URL}@{REF}"' in install and '"jaxprune[colab] @ {source}"' in install
  assert '"--constraint"' in install, "the runtime's jax and jaxlib are kept"
  assert "find_spec(\"jaxprune\") is None" in install, "the install is skipped under CI"
  assert "jax.devices()" in install, "the first cell reports the runtime"
  params = _parameters_cells(nb)
  assert len(params) == 1, "exactly one cell tagged 'parameters'"
  values = _assigned(params[0].source)
  assert values.get("SMOKE") is False, "the parameters cell sets SMOKE = False"
  assert set(values) - {"SMOKE"}, "the parameters cell holds the sizes too"


def test_readme_links_every_notebook():
  readme = (COLAB / "README.md").read_text()
  for path in NOTEBOOKS:
    assert _colab_link(_repo_url(_read(path)), path.name) in readme, path.name
  assert BADGE in readme


# ------------------------------------------------------------------ execution


def _write_kernel(root: Path, python: str, **env: str) -> Path:
  """A kernelspec (under ``root``) running ``python``, JAX on the CPU, offline unless
  ``env`` says otherwise (it is added to the kernel's environment)."""
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True)
  # JAX_DEFAULT_MATMUL_PRECISION=bfloat16: what a TPU does by default, which the
  # notebooks' comparisons with float32 PyTorch must survive.
  env = {"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
         "JAX_DEFAULT_MATMUL_PRECISION": "bfloat16",
         "JAXPRUNE_GLUE_DIR": str(GLUE_DIR), "PYTHONWARNINGS": "ignore::DeprecationWarning",
         **env}
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jaxprune tests", "language": "python", "env": env}))
  return root


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
  """A kernelspec running this interpreter."""
  return _write_kernel(tmp_path_factory.mktemp("jupyter"), sys.executable)


def fresh_runtime(folder: Path) -> Path:
  """A new venv standing for a fresh Colab runtime; returns its python.

  Colab preinstalls jax (built for its accelerator), torch, transformers, matplotlib and
  more, but not jaxprune. Here the preinstalled packages are this test environment's,
  seen through a ``.pth`` file as a folder of links to every package in it except
  jaxprune (Colab's system site-packages, in effect): pip finds them installed, as it
  finds Colab's, and whatever it installs goes into the venv."""
  import sysconfig
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")],
                 check=True)
  preinstalled = folder / "preinstalled"
  preinstalled.mkdir()
  for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
    if not (entry.name.startswith(("jaxprune", "__editable__", "__pycache__"))
            or entry.suffix == ".pth"):
      (preinstalled / entry.name).symlink_to(entry)
  (_site_packages(folder) / "colab_preinstalled.pth").write_text(f"{preinstalled}\n")
  return folder / "venv" / "bin" / "python"


def _site_packages(folder: Path) -> Path:
  """The site-packages of ``fresh_runtime(folder)``'s venv."""
  return next((folder / "venv" / "lib").glob("python*/site-packages"))


def _install_cell(repo_url: str | None = None, ref: str | None = None) -> str:
  """The notebooks' install cell (the same in each), with REPO_URL / REF replaced."""
  source = _code_cells(_read(COLAB / "quickstart.ipynb"))[0].source
  if repo_url is not None:
    source = re.sub(r'^REPO_URL = "[^"]+"', f"REPO_URL = {repo_url!r}", source, flags=re.M)
  if ref is not None:
    source = re.sub(r'^REF = "[^"]+"', f"REF = {ref!r}", source, flags=re.M)
  return source


def _run_cell(python: Path, source: str, cwd: Path) -> subprocess.CompletedProcess:
  return subprocess.run([str(python), "-c", source], cwd=cwd, capture_output=True, text=True,
                        env=cpu_env(1), timeout=300)


def test_the_install_cells_are_the_same():
  assert len({_code_cells(_read(p))[0].source for p in NOTEBOOKS}) == 1


@pytest.mark.slow
def test_install_cell_from_a_git_url_keeps_the_runtimes_jax(tmp_path):
  """The install cell in a fresh runtime, from this repository as a git URL (its
  committed HEAD): jaxprune installed into the runtime, jax and jaxlib kept as they were."""
  python = fresh_runtime(tmp_path)
  probe = ("import importlib.metadata as m, jax; print(m.version('jax'), m.version('jaxlib'), "
           "jax.__file__)")
  before = _run_cell(python, probe, tmp_path).stdout
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout.strip()
  result = _run_cell(python, _install_cell(f"file://{ROOT}", head), tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  jax_version, jaxlib_version, _ = before.split()
  assert (f"installed jaxprune from git+file://{ROOT}@{head}, keeping jax {jax_version}, "
          f"jaxlib {jaxlib_version}") in result.stdout, result.stdout
  assert "runtime: CPU" in result.stdout and "WARNING" not in result.stdout
  assert _run_cell(python, probe, tmp_path).stdout == before  # the same jax, untouched
  where = _run_cell(python, "import jaxprune; print(jaxprune.__file__)", tmp_path).stdout
  assert where.startswith(str(tmp_path / "venv")), where  # installed, not this checkout
  # Installed: the cell skips the install the second time.
  again = _run_cell(python, _install_cell(f"file://{ROOT}", head), tmp_path)
  assert again.returncode == 0 and "installed jaxprune" not in again.stdout, again.stderr


@pytest.mark.parametrize("case", ["jax outside the range", "pip fails"])
def test_install_cell_stops_with_one_line(case, tmp_path):
  """A runtime whose jax jaxprune cannot use, and an install pip cannot do, each end
  with one line (after pip's last lines) instead of a traceback or a CPU-only jax."""
  python = fresh_runtime(tmp_path)
  url = f"file://{ROOT}"
  if case == "jax outside the range":  # a jax 0.13 installed in the runtime
    site = _site_packages(tmp_path)
    (site / "jax-0.13.0.dist-info").mkdir()
    (site / "jax-0.13.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: jax\nVersion: 0.13.0\n")
  else:
    url = f"file://{tmp_path / 'no-such-repository'}"
  result = _run_cell(python, _install_cell(url, "main"), tmp_path)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  if case == "jax outside the range":
    assert last == ("this runtime has jax 0.13.0, jaxprune needs jax>=0.6,<0.12: pick another "
                    "runtime version (Runtime > Change runtime type), or install a jax in that "
                    "range for this accelerator and restart the session"), result.stderr
  else:
    assert last.startswith(f"pip could not install jaxprune from git+{url}@main (exit 1)")
    assert "no-such-repository" in result.stdout  # pip's own lines, printed above


def _smoke(nb, prefix: str = sys.prefix, parameters: dict = SMOKE_PARAMETERS):
  """The notebook with the network guard first and ``parameters`` injected (those its
  parameters cell has); it checks that it runs in the Python at ``prefix``."""
  params = _parameters_cells(nb)[0]
  names = _assigned(params.source)
  lines = ["# Parameters (injected by tests/test_notebooks.py)"]
  lines += [f"{k} = {v!r}" for k, v in parameters.items() if k in names]
  lines += ["import sys as _sys",
            f"assert _sys.prefix == {prefix!r}, (_sys.prefix, 'not the expected interpreter')"]
  injected = nbformat.v4.new_code_cell("\n".join(lines),
                                       metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(nb.cells.index(params) + 1, injected)
  nb.cells.insert(0, nbformat.v4.new_code_cell(NO_NETWORK))
  return nb


def prepare_tfds_glue(data_dir: Path, task: str, glue_dir: Path, train_rows: int = 400
                      ) -> None:
  """Prepares ``glue/<task>`` in the TFDS folder ``data_dir`` with TFDS's own GLUE
  builder, its download step handed the GLUE files in ``glue_dir`` (what the download
  would have unpacked), the training set cut to its first ``train_rows`` rows (reading
  all of SST-2's 67,349 row by row takes the kernel seconds the smoke run does not
  need). The notebook then reads a real prepared dataset through
  ``tfds.data_source``, as in Colab; ``tfds.testing.mock_data`` would give random rows
  and need TFDS patched inside the kernel."""
  import shutil
  from unittest import mock
  from jaxprune.data import get_task
  from jaxprune.data.readers import _import_tfds
  spec = get_task(task)
  unpacked = data_dir / "unpacked"
  (unpacked / spec.name).mkdir(parents=True)
  for file in (glue_dir / spec.name).glob("*.tsv"):
    if file.name == "train.tsv":
      lines = file.read_text(encoding="utf-8").splitlines(keepends=True)[:train_rows + 1]
      (unpacked / spec.name / file.name).write_text("".join(lines), encoding="utf-8")
    else:
      shutil.copy(file, unpacked / spec.name / file.name)
  tfds = _import_tfds()  # registers the glue builder
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                         lambda self, url, *args, **kwargs: str(unpacked)):
    tfds.builder(f"glue/{get_task(task).tfds_name}", data_dir=str(data_dir)).download_and_prepare(
        file_format="array_record")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_in_smoke_mode(path, kernel_dir, tmp_path, monkeypatch, request):
  """Every cell in smoke mode. The quickstart runs in a fresh runtime (``fresh_runtime``)
  where its own install cell installs jaxprune from a wheel built from this checkout
  and uploaded next to it (colab/README.md's fallback). sparsebert_glue takes Colab's
  path (``SOURCE = "hub"``): MiniLM-L6 from a hub on 127.0.0.1 (conftest's ``hub``,
  through ``HF_ENDPOINT``) and SST-2 from TFDS, prepared beforehand from the GLUE files
  (``prepare_tfds_glue``; no GLUE folder is given, so nothing else could be read)."""
  nbclient = pytest.importorskip("nbclient", reason="needs the test extra (nbclient)")
  pytest.importorskip("ipykernel", reason="needs the test extra (ipykernel)")
  prefix = sys.prefix
  parameters = dict(SMOKE_PARAMETERS)
  if path.stem == "sparsebert_glue":
    glue = request.getfixturevalue("glue_dir")  # skips without the offline GLUE files
    hub = request.getfixturevalue("hub")  # ... or the offline MiniLM package
    pytest.importorskip("tensorflow_datasets", reason="needs the tfds extra")
    prepare_tfds_glue(tmp_path / "tfds", "SST-2", glue)
    kernel_dir = _write_kernel(tmp_path / "jupyter", sys.executable, HF_HUB_OFFLINE="0",
                               TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=hub.url,
                               HF_HOME=str(tmp_path / "hf-home"),
                               TFDS_DATA_DIR=str(tmp_path / "tfds"),
                               JAXPRUNE_GLUE_DIR=str(tmp_path / "no-glue-here"))
    parameters["SOURCE"] = "hub"
    hub.requests.clear()
  else:
    python = fresh_runtime(tmp_path / "runtime")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    kernel_dir = _write_kernel(tmp_path / "jupyter", str(python))
    prefix = str(tmp_path / "runtime" / "venv")
  monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
  # Connection files and the IPython profile in the test's folders, not under $HOME.
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  # Two CPU devices: the cells run sharded, as on a TPU runtime's devices.
  monkeypatch.setenv("XLA_FLAGS", cpu_env(2)["XLA_FLAGS"])
  nb = _smoke(_read(path), prefix, parameters)
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell's traceback, on any error

  def text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

  runtime = text(_code_cells(nb)[1])  # the install cell (after the network guard)
  assert "runtime: CPU" in runtime and "2 device(s)" in runtime, runtime
  if path.stem == "quickstart":
    assert "installed jaxprune from file://" in runtime and "-py3-none-any.whl" in runtime
  images = [o for c in _code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]
  assert images, "the plots were drawn"
  if path.stem == "sparsebert_glue":
    outputs = "".join(text(c) for c in _code_cells(nb))
    assert "source: the Hugging Face hub (sentence-transformers/all-MiniLM-L6-v2) and GLUE " \
        "from tensorflow-datasets (glue/sst2)" in outputs
    fetched = [r for r in hub.requests if "/resolve/" in r and r.startswith("GET")]
    assert any(r.endswith("/config.json") for r in fetched), hub.requests
    assert any(r.endswith("/vocab.txt") for r in fetched), hub.requests
    assert "same predictions in 100%" in outputs and "(tolerance on CPU: 1e-04)" in outputs
    assert "float32 on CPU; runs in runs/colab/SST-2-smoke-" in outputs


def test_sparsebert_glue_offline_source(kernel_dir, tmp_path, monkeypatch, glue_dir, minilm_dir):
  """The cells up to the choice of source, with ``SOURCE = "offline"`` (the smoke run
  above takes the hub): MiniLM-L6 from the PyPI package, GLUE from the local files."""
  nbclient = pytest.importorskip("nbclient", reason="needs the test extra (nbclient)")
  monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  nb = _smoke(_read(COLAB / "sparsebert_glue.ipynb"))
  source_cell = next(c for c in _code_cells(nb) if 'SOURCE == "offline"' in c.source)
  nb.cells = nb.cells[:nb.cells.index(source_cell) + 1]
  nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  printed = "".join(o.get("text", "") for o in source_cell.outputs)
  assert printed.startswith("source: offline: MiniLM-L6 from the PyPI package") and (
      str(glue_dir.resolve()) in printed), printed


def test_install_cell_warns_when_a_gpu_runtime_runs_jax_on_the_cpu(tmp_path):
  """A machine with a GPU (here: an ``nvidia-smi`` on PATH) whose JAX runs on the CPU gets
  a warning line, not silence; jaxprune is importable here, so nothing is installed."""
  (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
  (tmp_path / "nvidia-smi").chmod(0o755)
  env = dict(cpu_env(1), PATH=f"{tmp_path}:{os.environ['PATH']}")
  result = subprocess.run([sys.executable, "-c", _install_cell()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "installed jaxprune" not in result.stdout
  assert "WARNING: this runtime has a GPU but JAX runs on the CPU" in result.stdout
