"""jaxprune-tpu (jaxprune/launch/): the exact gcloud commands, one-line errors, and whole
jobs on a fake 2-worker TPU pod.

The golden files under fixtures/launch/ hold the ``--dry-run`` output (one shell-quoted
gcloud command per line); ``JAXPRUNE_UPDATE_GOLDENS=1`` rewrites them. The pod tests put
tests/fake_gcloud/ first on PATH: its ``gcloud`` runs every worker's command as a local
process with 2 CPU devices and the coordinator JAX auto-detects (see its docstring), so
``create`` + ``setup --local`` + ``run`` of the tiny prune job on a v4-16 (2 workers)
with a gs:// workdir on the GCS emulator must end where a 1-process run ends, also after
a preemption that ``babysit`` recovers from.
"""

import json
import os
from pathlib import Path
import shlex
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from test_multiprocess import STEPS

ROOT = Path(__file__).resolve().parents[1]
FAKE_GCLOUD = Path(__file__).parent / "fake_gcloud"
GOLDENS = Path(__file__).parent / "fixtures" / "launch"
UPDATE = os.environ.get("JAXPRUNE_UPDATE_GOLDENS") == "1"
WHERE = ["--project=my-project", "--zone=us-central2-b"]


def _env(tmp_path: Path, **extra: str) -> dict:
  """This environment without JAXPRUNE_TPU_* defaults and with no settings file."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAXPRUNE_TPU_")}
  env["JAXPRUNE_TPU_SETTINGS"] = str(tmp_path / "no-settings.toml")
  env.update(extra)
  return env


def launcher(*args: str, env: dict, cwd: Path = ROOT, timeout: float = 600
             ) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxprune.launch", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        stdin=subprocess.DEVNULL)


# --- golden dry-run commands

GOLDEN_CASES = {
    "create_v4-32_spot_queued": ["create", "pod", "--accelerator-type=v4-32", "--spot",
                                 "--queued", "--valid-until=6h"],
    "create_v5litepod-8_on_demand": ["create", "lite", "--accelerator-type=v5litepod-8"],
    "create_v6e-8_reserved_queued": ["create", "trillium", "--accelerator-type=v6e-8",
                                     "--reserved", "--queued"],
    "setup_git_ref": ["setup", "pod", "--ref=v0.1.0", "--jax-version=0.10.2",
                      "--repo=https://example.org/jaxprune.git"],
    "run_gs_workdir": ["run", "pod", "--accelerator-type=v4-32", "--run-name=ref1", "--",
                       "--mode=prune", "--config=configs/reference.py",
                       "--workdir=gs://my-bucket/runs/ref"],
    "run_detached_env_restart": ["run", "pod", "--accelerator-type=v4-16", "--run-name=r2",
                                 "--detach", "--restart", "--env=XLA_FLAGS=--xla_dump_to=/tmp/d",
                                 "--env=MY_TAG=a b", "--", "--mode=export",
                                 "--workdir=gs://my-bucket/runs/ref"],
    "stop": ["stop", "pod", "--accelerator-type=v4-16", "--grace=20"],
    "create_internal_ip_queued": ["create", "private", "--accelerator-type=v5litepod-16",
                                  "--queued", "--spot", "--internal-ip", "--network=corp",
                                  "--subnetwork=tpu-subnet", "--labels=team=nlp,cost=sparse",
                                  "--service-account=tpu@my-project.iam.gserviceaccount.com",
                                  "--scopes=cloud-platform"],
    "run_internal_ip": ["run", "private", "--accelerator-type=v5litepod-16", "--internal-ip",
                        "--run-name=p1", "--", "--mode=finetune",
                        "--workdir=gs://my-bucket/runs/p"],
    "logs_follow_all": ["logs", "pod", "--accelerator-type=v4-16", "--worker=all", "--follow"],
    "delete_queued": ["delete", "pod", "--queued"],
    "create_multislice": ["create", "ms", "--accelerator-type=v5litepod-16", "--num-slices=2",
                          "--spot"],
    "run_multislice": ["run", "ms", "--accelerator-type=v4-16", "--num-slices=2",
                       "--run-name=m1", "--env=MY_TAG=x", "--", "--mode=prune",
                       "--workdir=gs://my-bucket/runs/ms"],
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_dry_run_prints_the_golden_gcloud_commands(case, tmp_path):
  command, name, *rest = GOLDEN_CASES[case]
  result = launcher(command, name, *WHERE, "--dry-run", *rest,
                    env=_env(tmp_path, PATH=str(tmp_path)))  # no gcloud needed, none run
  assert result.returncode == 0, result.stderr
  golden = GOLDENS / f"{case}.txt"
  if UPDATE:
    golden.write_text(result.stdout)
  assert result.stdout == golden.read_text(), f"{case}: dry run differs from {golden}"
  for line in result.stdout.splitlines():
    args = shlex.split(line)
    assert args[:3] == ["gcloud", "compute", "tpus"], line
    assert all(a and not a.startswith("[") for a in args), line  # no list-valued flag


def test_golden_commands_say_what_the_issue_asks(tmp_path):
  """The parts of the goldens that matter, spelled out (so that regenerating the goldens
  cannot silently drop them)."""
  def lines(case):
    return [shlex.split(l) for l in (GOLDENS / f"{case}.txt").read_text().splitlines()]
  spot = next(l for l in lines("create_v4-32_spot_queued") if "create" in l)
  assert spot[3:6] == ["queued-resources", "create", "pod"]
  assert {"--node-id=pod", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base",
          "--spot", "--valid-until-duration=6h", "--zone=us-central2-b"} <= set(spot)
  lite = next(l for l in lines("create_v5litepod-8_on_demand") if "create" in l)
  assert lite[3:5] == ["tpu-vm", "create"] and "--version=v2-alpha-tpuv5-lite" in lite
  assert not {"--spot", "--reserved"} & set(lite)
  trillium = next(l for l in lines("create_v6e-8_reserved_queued") if "create" in l)
  assert {"--reserved", "--runtime-version=v2-alpha-tpuv6e"} <= set(trillium)
  setup = lines("setup_git_ref")
  install = next(a for a in setup[-1] if a.startswith("--command="))
  assert "git clone -q https://example.org/jaxprune.git" in install
  assert "checkout -q v0.1.0" in install and "'jax[tpu]==0.10.2'" in install
  assert '"$HOME/jaxprune-src[gcs]"' in install
  run = lines("run_gs_workdir")
  assert [next(a for a in l if a.startswith("--worker=")) for l in run] == [
      f"--worker={i}" for i in range(4)]  # v4-32: 4 hosts, one ssh each
  job = run[0][-1]
  assert "rm -f /tmp/libtpu_lockfile" in job and "pkill" not in job  # no stale-job killing
  assert "setsid nohup bash -c" in job  # detached from the ssh session
  assert ("--workdir=gs://my-bucket/runs/ref --config.coordinator_address=auto" in job)
  assert "gs://my-bucket/runs/ref/logs/worker-0.log" in job
  assert "gs://my-bucket/runs/ref/logs/worker-3.log" in run[3][-1]
  assert 'tail -n +1 -F "$HOME/jaxprune-jobs"/ref1.log --pid=' in job
  assert job.endswith('exit "$(cat "$HOME/jaxprune-jobs"/ref1.exit 2>/dev/null || echo 1)"')
  detached = lines("run_detached_env_restart")[0][-1]
  assert "tail -n +1" not in detached and "started r2 on" in detached
  assert "--config=configs/base.py" in detached  # export without --config joins the run
  assert "XLA_FLAGS=--xla_dump_to=/tmp/d" in detached and "MY_TAG=a b" in detached
  assert "is still running" not in detached  # --restart stops the other run instead
  stop = lines("stop")
  assert [l[5] for l in stop] == ["pod"] * 2 and "kill -TERM" in stop[0][-1]
  private = next(l for l in lines("create_internal_ip_queued") if "create" in l)
  assert {"--internal-ips", "--network=corp", "--subnetwork=tpu-subnet",
          "--labels=team=nlp,cost=sparse", "--scopes=cloud-platform",
          "--service-account=tpu@my-project.iam.gserviceaccount.com"} <= set(private)
  assert all("--internal-ip" in l for l in lines("run_internal_ip") if "ssh" in l)
  assert "DPkg::Lock::Timeout=600" in install and "--retries 10" in install
  follow = lines("logs_follow_all")
  assert [l[4] for l in follow] == ["describe", "ssh", "ssh"] and "tail -n +1 -F" in follow[2][-1]
  multi = next(l for l in lines("create_multislice") if "create" in l)
  assert multi[3:6] == ["queued-resources", "create", "ms"]  # --num-slices implies --queued
  assert {"--node-count=2", "--node-prefix=ms", "--spot"} <= set(multi)
  assert not any(a.startswith("--node-id") for a in multi)
  runs = lines("run_multislice")  # every worker of every slice, slice after slice
  assert [(l[5], l[8]) for l in runs] == [("ms-0", "--worker=0"), ("ms-0", "--worker=1"),
                                          ("ms-1", "--worker=0"), ("ms-1", "--worker=1")]
  for i, l in enumerate(runs):
    job = l[-1]
    assert (f"MEGASCALE_COORDINATOR_ADDRESS=<internal IP of ms-0 worker 0>" in job
            and "MEGASCALE_NUM_SLICES=2" in job and "MEGASCALE_PORT=8080" in job
            and f"MEGASCALE_SLICE_ID={i // 2}" in job and "MY_TAG=x" in job), job
    assert f"gs://my-bucket/runs/ms/logs/worker-{i}.log" in job


def test_runtime_version_per_generation_and_hosts():
  from jaxprune.launch import accelerators
  expected = {"v4-8": ("tpu-ubuntu2204-base", 1), "v4-16": ("tpu-ubuntu2204-base", 2),
              "v4-32": ("tpu-ubuntu2204-base", 4), "v5litepod-8": ("v2-alpha-tpuv5-lite", 1),
              "v5litepod-16": ("v2-alpha-tpuv5-lite", 4), "v5p-8": ("v2-alpha-tpuv5", 1),
              "v5p-32": ("v2-alpha-tpuv5", 4), "v6e-8": ("v2-alpha-tpuv6e", 1),
              "v6e-16": ("v2-alpha-tpuv6e", 4)}
  for name, (runtime, hosts) in expected.items():
    acc = accelerators.parse(name)
    assert (acc.runtime_version, acc.hosts) == (runtime, hosts), name


def test_exit_codes_match_jaxprune():
  from jaxprune.checkpoint import PREEMPTED_EXIT_CODE
  from jaxprune.launch import workers
  from jaxprune.sharding import PEER_LOST_EXIT_CODE
  assert workers.PREEMPTED_EXIT_CODE == PREEMPTED_EXIT_CODE
  assert workers.PEER_LOST_EXIT_CODE == PEER_LOST_EXIT_CODE


def test_default_jax_pin_is_the_installed_jax(tmp_path):
  import importlib.metadata
  result = launcher("setup", "pod", *WHERE, "--ref=main", "--repo=https://example.org/j.git",
                    "--dry-run", env=_env(tmp_path))
  assert f"'jax[tpu]=={importlib.metadata.version('jax')}'" in result.stdout


def test_settings_come_from_flags_then_environment_then_file(tmp_path):
  settings = tmp_path / "tpu.toml"
  settings.write_text('project = "file-project"\nzone = "file-zone"\n'
                      'accelerator_type = "v4-8"\n')
  env = _env(tmp_path, JAXPRUNE_TPU_SETTINGS=str(settings), JAXPRUNE_TPU_ZONE="env-zone")
  result = launcher("create", "a", "--dry-run", env=env)
  assert result.returncode == 0, result.stderr
  assert "--zone=env-zone --project=file-project --accelerator-type=v4-8" in result.stdout
  result = launcher("create", "a", "--dry-run", "--zone=flag-zone", env=env)
  assert "--zone=flag-zone --project=file-project" in result.stdout
  # The default settings file is ~/.config/jaxprune/tpu.toml.
  home = tmp_path / "home"
  (home / ".config" / "jaxprune").mkdir(parents=True)
  (home / ".config" / "jaxprune" / "tpu.toml").write_text(settings.read_text())
  env = {k: v for k, v in _env(tmp_path, HOME=str(home)).items()
         if k not in ("JAXPRUNE_TPU_SETTINGS", "XDG_CONFIG_HOME")}
  result = launcher("create", "a", "--dry-run", env=env)
  assert "--zone=file-zone --project=file-project" in result.stdout, result.stderr


# --- one-line errors

ERRORS = {
    "no project": (["create", "a", "--zone=z", "--accelerator-type=v4-8"],
                   "no project (the Google Cloud project): pass --project"),
    "no zone": (["create", "a", "--project=p", "--accelerator-type=v4-8"], "no zone"),
    "no bucket": (["run", "a", *WHERE, "--accelerator-type=v4-8", "--dry-run", "--",
                   "--mode=prune"], "no bucket (a gs:// bucket"),
    "local workdir": (["run", "a", *WHERE, "--accelerator-type=v4-8", "--", "--mode=prune",
                       "--workdir=runs/x"], "--workdir=runs/x: a TPU job's work directory "
                                            "must be gs://"),
    "unknown accelerator": (["create", "a", *WHERE, "--accelerator-type=v7-8"],
                            "unknown accelerator type 'v7-8'"),
    "bad size": (["create", "a", *WHERE, "--accelerator-type=v4-12"],
                 "unknown accelerator type 'v4-12'"),
    "gcloud missing": (["status", *WHERE], "gcloud not found on PATH"),
    "spot and reserved": (["create", "a", *WHERE, "--accelerator-type=v4-8", "--spot",
                           "--reserved"], "--spot and --reserved exclude each other"),
    "flag of another subcommand": (["run", "a", *WHERE, "--spot"],
                                   "--spot does not apply to run"),
    "no name": (["setup", "--local", *WHERE], "setup needs the TPU's NAME"),
    "no subcommand": (["launch", "a"], "expected a subcommand"),
    "setup source": (["setup", "a", *WHERE, "--dry-run"], "setup needs one of --local"),
    "delete unasked": (["delete", "a", *WHERE], "pass --yes to confirm"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_user_errors_are_one_line(case, tmp_path):
  args, message = ERRORS[case]
  result = launcher(*args, env=_env(tmp_path, PATH=str(tmp_path)))
  assert result.returncode == 2, (case, result.stdout, result.stderr)
  assert result.stderr.startswith("jaxprune-tpu: error: "), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert message in result.stderr, result.stderr


# --- the fake gcloud

@pytest.fixture
def fake(tmp_path):
  """The environment of a launcher that finds the fake gcloud first on PATH."""
  state = tmp_path / "gcloud-state"
  return _env(tmp_path, FAKE_GCLOUD_STATE=str(state),
              PATH=f"{FAKE_GCLOUD}{os.pathsep}{os.environ['PATH']}",
              FAKE_GCLOUD_PYTHON=sys.executable)


def _calls(env: dict, *words: str) -> list[list[str]]:
  path = Path(env["FAKE_GCLOUD_STATE"]) / "calls.jsonl"
  calls = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
  return [c for c in calls if all(w in c for w in words)]


def _status(name: str, env: dict, *extra: str) -> str:
  result = launcher("status", name, *WHERE, *extra, env=env)
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_resource_exhausted_is_one_line_and_retried_when_queued(fake, tmp_path):
  env = dict(fake, FAKE_GCLOUD_FAIL_CREATE="RESOURCE_EXHAUSTED")
  quick = ["--retry-wait=0.05", "--poll=0.05"]
  result = launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", "--create-retries=1",
                    *quick, env=env)
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 2
  assert result.stderr.splitlines()[-1].startswith(
      "jaxprune-tpu: error: no v4-16 capacity in us-central2-b (RESOURCE_EXHAUSTED): gave up "
      "after 2 tries; try --queued"), result.stderr
  assert len(_calls(env, "create")) == 2  # a plain create is retried with backoff too
  result = launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", "--queued",
                    "--create-retries=2", *quick, env=env)
  assert result.returncode == 2 and "gave up after 3 tries" in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 3  # two retry notes, one error
  assert len(_calls(env, "create")) == 5
  # Two failures, then capacity; the queued resource waits twice before it is ACTIVE.
  env = dict(fake, FAKE_GCLOUD_FAIL_CREATE="RESOURCE_EXHAUSTED:2", FAKE_GCLOUD_QUEUE_POLLS="2",
             FAKE_GCLOUD_STATE=str(tmp_path / "state2"))
  result = launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", "--queued", "--spot",
                    *quick, env=env)
  assert result.returncode == 0, result.stderr
  assert "retry 2/8" in result.stderr and "WAITING_FOR_RESOURCES" in result.stderr
  assert "queued resource PROVISIONING" in result.stderr
  assert len(_calls(env, "queued-resources", "create")) == 3
  assert "pod: READY v4-16 2 workers tpu-ubuntu2204-base spot, queued resource ACTIVE" in \
      _status("pod", env)
  result = launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", env=env)
  assert result.returncode == 0 and "already READY, reusing it" in result.stderr
  assert launcher("delete", "pod", *WHERE, "--yes", env=env).returncode == 0
  assert "pod: not found" in _status("pod", env)
  assert _calls(env, "queued-resources", "delete", "--force")


def test_preempted_vm_ends_the_ssh_and_shows_in_status(fake):
  env = dict(fake, FAKE_GCLOUD_PREEMPT_AFTER="1", FAKE_GCLOUD_PREEMPT_GRACE="1")
  assert launcher("create", "spot", *WHERE, "--accelerator-type=v4-16", "--spot",
                  env=env).returncode == 0
  start = time.time()
  result = launcher("ssh", "spot", *WHERE, "--worker=1", "--", "sleep", "60", env=env)
  assert result.returncode == 255 and time.time() - start < 30, result.stderr
  assert "spot: PREEMPTED v4-16 2 workers" in _status("spot", env)
  result = launcher("run", "spot", *WHERE, "--", "--workdir=gs://b/x", env=env)
  assert result.returncode == 2 and "spot is PREEMPTED, not READY" in result.stderr


def test_setup_local_installs_once_per_source(fake, tmp_path):
  import importlib.metadata
  assert launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", env=fake).returncode == 0
  first = launcher("setup", "pod", *WHERE, "--local", env=fake)
  assert first.returncode == 0, first.stdout + first.stderr
  homes = Path(fake["FAKE_GCLOUD_STATE"]) / "homes" / "pod"
  for i in range(2):
    venv = homes / f"worker-{i}" / "jaxprune-venv"
    pip = [json.loads(l) for l in (venv / "pip-calls.jsonl").read_text().splitlines()]
    assert [f"jax[tpu]=={importlib.metadata.version('jax')}",
            str(homes / f"worker-{i}" / "jaxprune-src[gcs]")] == pip[1][-2:]
    src = homes / f"worker-{i}" / "jaxprune-src"
    assert (src / "configs" / "tiny.py").read_bytes() == (ROOT / "configs/tiny.py").read_bytes()
    assert (src / "jaxprune" / "launch" / "cli.py").is_file()
  assert len(_calls(fake, "scp")) == 1
  again = launcher("setup", "pod", *WHERE, "--local", env=fake)
  assert again.returncode == 0 and "already installed on every worker" in again.stderr
  assert len(_calls(fake, "scp")) == 1  # nothing copied or installed the second time
  stamp = (homes / "worker-0" / "jaxprune-venv" / "jaxprune-stamp").read_text().strip()
  other = launcher("setup", "pod", *WHERE, "--local", "--extras=gcs,demo", env=fake)
  assert other.returncode == 0 and len(_calls(fake, "scp")) == 2  # other extras: reinstall
  assert (homes / "worker-0" / "jaxprune-venv" / "jaxprune-stamp").read_text().strip() != stamp


def _alive(env: dict, name: str) -> list[int]:
  alive = []
  for pid_file in (Path(env["FAKE_GCLOUD_STATE"]) / "pids" / name).glob("*"):
    try:
      os.killpg(int(pid_file.name), 0)
      alive.append(int(pid_file.name))
    except ProcessLookupError:
      pass
  return alive


@pytest.mark.slow
def test_a_failing_worker_stops_the_other_and_is_named(fake, tmp_path):
  assert launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", env=fake).returncode == 0
  assert launcher("setup", "pod", *WHERE, "--local", env=fake).returncode == 0
  env = dict(fake, FAKE_GCLOUD_FAIL_WORKER="1")
  start = time.time()
  result = launcher("run", "pod", *WHERE, f"--logs-dir={tmp_path / 'logs'}", "--run-name=r1",
                    "--grace=5", "--", "--mode=finetune", "--config=configs/tiny.py:steps=400",
                    "--workdir=gs://never-written/x", env=env, cwd=tmp_path)
  assert result.returncode == 1, result.stderr
  error = [l for l in result.stderr.splitlines() if "error:" in l]
  assert error == [f"jaxprune-tpu: error: worker 1 of pod exited with status 1; the other "
                   f"workers were stopped; log: {tmp_path / 'logs/pod/r1/worker-1.log'}; "
                   "last line: fake gcloud: worker 1 fails (FAKE_GCLOUD_FAIL_WORKER)"]
  assert time.time() - start < 120
  assert _alive(fake, "pod") == []  # worker 0's job (waiting for worker 1) was stopped
  assert "kill -TERM" in _calls(fake, "ssh", "--worker=all")[-1][-1]
  shown = launcher("logs", "pod", *WHERE, "--worker=all", f"--logs-dir={tmp_path / 'logs'}",
                   env=env)  # worker 1 does not answer: the streamed copies
  assert shown.returncode == 0, shown.stderr
  assert f"==> {tmp_path / 'logs/pod/r1/worker-1.log'} <==" in shown.stdout
  assert "worker 1 fails (FAKE_GCLOUD_FAIL_WORKER)" in shown.stdout
  assert "==> " in shown.stdout.split("worker-1.log <==")[0]  # worker 0's log first


# --- whole jobs on the fake pod

@pytest.fixture
def reference(one_process_prune_run):
  """conftest's tiny prune job as 1 process x 4 CPU devices (teacher on local disk: the
  fake pod's workers run on this machine)."""
  return one_process_prune_run


def _compare(reference: tuple, workdir: str) -> float:
  """The pod's final checkpoint and HF export against the 1-process run's; returns the
  largest relative difference of an exported tensor."""
  from etils import epath
  from safetensors.numpy import load
  from test_multiprocess import _checkpoint, assert_matches_one_process
  _, local, state = reference
  assert_matches_one_process(state, _checkpoint(epath.Path(workdir), STEPS))
  a = load((local / "hf" / "model.safetensors").read_bytes())
  b = load(epath.Path(f"{workdir}/hf/model.safetensors").read_bytes())
  assert a.keys() == b.keys()
  worst = 0.0
  for k in a:
    assert np.count_nonzero(a[k]) == np.count_nonzero(b[k]), k
    np.testing.assert_array_equal(a[k] == 0, b[k] == 0, err_msg=k)
    worst = max(worst, float(np.linalg.norm(b[k] - a[k]) / max(np.linalg.norm(a[k]), 1e-30)))
  assert worst <= 1e-5, worst
  return worst


def _pod_env(fake: dict) -> dict:
  # The launcher and the fake's workers reach the GCS emulator through these (the
  # gcs_bucket fixture put them into os.environ after `fake` was made).
  return {**fake, **{k: os.environ[k] for k in ("STORAGE_EMULATOR_HOST",
                                               "TENSORSTORE_GCS_HTTP_URL",
                                               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}}


def _checkpoint_steps(workdir: str) -> list[int]:
  """The checkpoint steps in a gs:// workdir, asked of the emulator's JSON API directly
  (gcsfs would cache the listing and later miss the final checkpoint)."""
  import urllib.parse
  import urllib.request
  bucket, _, prefix = workdir.removeprefix("gs://").partition("/")
  query = urllib.parse.urlencode({"prefix": f"{prefix}/checkpoints/"})
  url = f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o?{query}"
  with urllib.request.urlopen(url) as response:
    names = [item["name"] for item in json.load(response).get("items", [])]
  return sorted({int(part) for n in names
                 if (part := n[len(prefix) + len("/checkpoints/"):].split("/")[0]).isdigit()})


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 300):
  deadline = time.time() + timeout
  while not (value := condition()):
    assert proc.poll() is None, f"babysit ended before {what}: " + str(proc.communicate())
    assert time.time() < deadline, f"no {what} in {timeout} s"
    time.sleep(0.3)
  return value


@pytest.mark.slow
def test_multislice_babysit_resumes_through_two_preemptions_and_matches(
    reference, gcs_bucket, fake, tmp_path):
  """Two spot slices (a multislice queued resource: 2 x v4-8, one worker x 2 CPU devices
  each) preempted twice mid-job: babysit deletes the SUSPENDED resource, re-creates both
  slices, and the job resumes each time to the same masks and weights as 1 process x 4.

  The job's mesh is (1, 4): its ``model`` axis spans the two slices' hosts, so the
  pruning-event report (``report.layer_counts``) and the HF export (``sharding.to_host``)
  gather arrays across processes."""
  from jaxprune import paths
  from jaxprune import report
  env = dict(_pod_env(fake), FAKE_GCLOUD_PREEMPT_GRACE="30")
  state = Path(env["FAKE_GCLOUD_STATE"])
  workdir = f"{gcs_bucket}/launch/babysat"
  args, _, _ = reference
  babysit = subprocess.Popen(
      [sys.executable, "-m", "jaxprune.launch", "babysit", "spotpod", *WHERE,
       "--accelerator-type=v4-8", "--num-slices=2", "--spot", "--local", "--retries=2",
       "--run-name=r1", "--poll=0.2", "--", *args, "--config.mesh_shape=(1,4)",
       "--config.preemption_check_every=1",  # stop at the next step, not at step 10
       f"--workdir={workdir}"],
      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  newest = 0
  for victim in ("spotpod-0", "spotpod-1"):
    # A checkpoint newer than any of the attempt before: this attempt has trained.
    _wait_for(lambda: max(_checkpoint_steps(workdir), default=0) > newest,
              f"checkpoint after step {newest}", babysit)
    trigger = state / "vms" / f"{victim}.preempt"
    trigger.write_text("")  # this slice is preempted now (and the resource with it)
    # The fake takes the trigger away as it starts, the lock once every slice is deleted.
    _wait_for(lambda: not trigger.exists() and
              not (state / "vms" / f"{victim}.preempting").exists(),
              f"preemption of {victim}", babysit)
    newest = max(_checkpoint_steps(workdir))  # the preempted attempt saved its last here
  out, err = babysit.communicate(timeout=600)
  assert babysit.returncode == 0, err + out[-3000:]
  for attempt in (1, 2):
    assert re.search(rf"attempt {attempt}/3 interrupted \(VMs spotpod-0 \w+, spotpod-1 \w+, "
                     r"exit status (255|75|4)\); resuming", err), err
  assert err.count("queued resource SUSPENDED: deleting it to create it again") == 2, err
  assert len(_calls(env, "queued-resources", "create", "--node-count=2")) == 3
  assert len(_calls(env, "queued-resources", "delete", "spotpod")) == 2
  rows = report.read_metrics(f"{workdir}/metrics.jsonl")
  preempted = [r["step"] for r in rows if r["kind"] == "preempted"]
  assert len(preempted) == 2 and 0 < preempted[0] < preempted[1] < STEPS, preempted
  logs = tmp_path / "logs" / "spotpod" / "r1"
  worker0, worker1 = ((logs / f"worker-{i}.log").read_text() for i in range(2))
  assert "=== jaxprune-tpu: attempt 3/3 ===" in worker0 and worker1.strip()
  assert worker0.splitlines()[-1] in out  # worker 0's output streamed to the terminal too
  assert "spotpod: the job ended well on 2 workers" in err
  summary = json.loads(paths.read_text(f"{workdir}/summary.json"))
  assert summary["processes"] == 2 and summary["devices"] == 4
  assert summary["mesh"] == {"data": 1, "model": 4}
  events = [r for r in rows if r["kind"] == "prune_event"]
  assert events and events[-1]["total"] == pytest.approx(summary["encoder_sparsity"])
  # create + setup + run (babysit runs the same three) give the 1-process result.
  worst = _compare(reference, workdir)
  print(f"\npreempted at steps {preempted}, resumed by babysit: masks identical, largest "
        f"relative difference of an exported tensor {worst:.2e}")


@pytest.mark.slow
def test_a_detached_job_outlives_the_launcher_and_is_watched_and_stopped(
    fake, gcs_bucket, glue_dir, tmp_path):
  """`run --detach` returns at once; `status` shows each worker's job and worker 0's last
  step and loss; a launcher killed while streaming leaves the job running; a `run` of
  another run name refuses to start over it (a retried ssh never kills a live job);
  `stop` makes every worker save and exit 75 and says so; the log reaches
  <workdir>/logs in the bucket; `logs --follow` of an ended job prints it and returns.

  On two slices (``--num-slices=2``, 2 x v4-8: one worker each): every command reaches
  the workers of both, numbered slice after slice."""
  # The job only has to run while the launcher is exercised: 0.5 s of sleep per step
  # (tests/site/sitecustomize.py) keeps its two workers from taking both cores (at 0.2 s
  # each still spent ~12 CPU-s on ~175 steps of logging and checkpoints).
  pause = 0.5
  env = dict(_pod_env(fake), JAXPRUNE_GLUE_DIR=str(glue_dir),
             JAXPRUNE_TEST_STEP_SECONDS=str(pause))
  slices = ["--num-slices=2"]
  for step in (["create", "pod", *WHERE, "--accelerator-type=v4-8", *slices, "--poll=0.05"],
               ["setup", "pod", *WHERE, "--local", *slices]):
    assert launcher(*step, env=env).returncode == 0
  workdir = f"{gcs_bucket}/launch/detached"
  job = ["--", "--mode=finetune", "--config=configs/tiny.py:steps=400",
         "--config.finetune.checkpoint_every=50", f"--workdir={workdir}"]
  start = time.time()
  started = launcher("run", "pod", *WHERE, "--run-name=a", "--detach", *slices, *job,
                     env=env, cwd=tmp_path)
  assert started.returncode == 0 and time.time() - start < 60, started.stderr
  assert "job a started on 2 workers, detached" in started.stderr
  deadline = time.time() + 180
  while not re.search(r"worker 0 \(pod-0 worker 0\): running \(run a\), step ([3-9]|\d\d+)/400",
                      shown := _status("pod", env, *slices)):
    assert time.time() < deadline, shown
    time.sleep(1)
  assert "worker 1 (pod-1 worker 0): running (run a)" in shown
  assert "pod-1: READY v4-8 1 workers" in shown and "queued resource ACTIVE" in shown
  attached = subprocess.Popen([sys.executable, "-m", "jaxprune.launch", "run", "pod", *WHERE,
                               "--run-name=a", f"--logs-dir={tmp_path / 'logs'}", *slices,
                               *job],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  assert "attaching to the running job a" in attached.stdout.readline()
  attached.kill()  # the launcher dies; the job must not
  attached.wait()
  time.sleep(2)
  assert "worker 0 (pod-0 worker 0): running (run a)" in _status("pod", env, *slices)
  other = launcher("run", "pod", *WHERE, "--run-name=b", *slices, *job, env=env, cwd=tmp_path)
  assert other.returncode == 3, other.stderr
  assert "job a is still running on this worker" in other.stderr
  # The refusal stopped nothing: job a still runs on both workers.
  shown = _status("pod", env, *slices)
  assert all(f"worker {i} (pod-{i} worker 0): running (run a)" in shown for i in (0, 1)), shown
  stopped = launcher("stop", "pod", *WHERE, "--grace=120", *slices, env=env)
  assert stopped.returncode == 0, stopped.stderr
  assert stopped.stdout.splitlines() == ["worker 0: job a: exit status 75",
                                         "worker 1: job a: exit status 75"]
  assert "worker 1 (pod-1 worker 0): exit 75 (run a)" in _status("pod", env, *slices)
  from jaxprune import paths
  copied = paths.read_text(f"{workdir}/logs/worker-0.log")
  preempted = int(re.search(r"jaxprune: preempted at step (\d+)", copied)[1])
  assert preempted <= (time.time() - start) / pause, preempted  # each step slept its pause
  followed = launcher("logs", "pod", *WHERE, "--follow", *slices, env=env)
  assert followed.returncode == 0 and "jaxprune: preempted at step" in followed.stdout


@pytest.mark.parametrize("kind,message", [
    ("QUOTA", "not enough v4-16 quota in us-central2-b"),
    ("PERMISSION", "no permission to create TPUs in project my-project"),
    ("ZONE", "zone us-central2-b is unknown or offers no Cloud TPU")])
def test_quota_permission_and_zone_errors_are_one_line_and_not_retried(fake, kind, message):
  env = dict(fake, FAKE_GCLOUD_FAIL_CREATE=kind)
  for queued in ([], ["--queued"]):
    result = launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", *queued,
                      "--retry-wait=0.05", env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"jaxprune-tpu: error: {message}"), result.stderr
  assert len(_calls(env, "create")) == 2


def _babysit_quick(env: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
  """babysit of a job that fails at once (an export format jaxprune's flags reject: exit
  2, before the job imports jax), so that only the VM's and queued resource's states are
  exercised."""
  return launcher("babysit", "pod", *WHERE, "--accelerator-type=v4-16", "--local",
                  "--poll=0.05", "--retry-wait=0.05", "--run-name=q", *extra, "--",
                  "--mode=export", "--format=none", "--workdir=gs://jaxprune-test/never-written",
                  env=env, cwd=tmp_path)


@pytest.mark.slow
def test_babysit_replaces_a_failed_queued_resource(fake, gcs_bucket, tmp_path):
  """ACCEPTED -> PROVISIONING -> FAILED: babysit deletes it (DELETING, waited through)
  and creates it again; the second one becomes ACTIVE and the job runs."""
  env = dict(_pod_env(fake), FAKE_GCLOUD_QR_FAIL="FAILED:1", FAKE_GCLOUD_DELETE_POLLS="2")
  result = _babysit_quick(env, tmp_path, "--queued", "--spot")
  assert result.returncode == 2, result.stderr  # the job's own failure: not retried
  err = result.stderr
  assert "queued resource FAILED: deleting it to create it again" in err, err
  assert "queued resource DELETING; waiting" in err
  assert len(_calls(env, "queued-resources", "create")) == 2
  assert len(_calls(env, "queued-resources", "delete", "--force")) == 1
  assert not _calls(env, "tpu-vm", "delete")


@pytest.mark.slow
def test_babysit_waits_through_repairing_and_retries_a_failed_setup(fake, gcs_bucket,
                                                                   tmp_path):
  """A VM REPAIRING for 3 describes is waited for, not deleted; then setup fails on
  worker 1 (its first two ssh commands exit 1: the installed-version check, whose
  failure means "install", and the install) and is retried, and the job runs."""
  env = dict(_pod_env(fake), FAKE_GCLOUD_FAIL_WORKER="1:2")
  assert launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", env=env).returncode == 0
  (Path(env["FAKE_GCLOUD_STATE"]) / "vms" / "pod.repair").write_text("3")
  result = _babysit_quick(env, tmp_path)
  assert result.returncode == 2, result.stderr  # the job's own failure: not retried
  assert "pod: VM REPAIRING; waiting" in result.stderr
  assert not _calls(env, "delete") and len(_calls(env, "create")) == 1
  retries = re.findall(r"pod: setup failed \(.*\); retry (\d)/3", result.stderr)
  assert retries == ["1"], result.stderr
  assert re.search(r"worker \d of pod exited with status 2", result.stderr)  # the job ran


@pytest.mark.slow
def test_babysit_replaces_a_suspended_queued_resource_whose_vm_is_gone(fake, gcs_bucket,
                                                                      tmp_path):
  """A preempted queued spot resource: its VM is deleted (describe: NOT_FOUND) and the
  resource goes SUSPENDING, then SUSPENDED; babysit waits, deletes it and re-creates."""
  env = _pod_env(fake)
  quick = ["--poll=0.05", "--retry-wait=0.05"]
  assert launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", "--queued", "--spot",
                  *quick, env=env).returncode == 0
  (Path(env["FAKE_GCLOUD_STATE"]) / "vms" / "pod.preempt").write_text("")
  assert "pod: no TPU VM yet, queued resource SUSPEND" in _status("pod", env)  # ING, ED
  result = _babysit_quick(env, tmp_path, "--queued", "--spot")
  assert result.returncode == 2, result.stderr
  assert "queued resource SUSPENDED: deleting it to create it again" in result.stderr
  assert len(_calls(env, "queued-resources", "create")) == 2


@pytest.mark.slow
def test_babysit_replaces_a_preempted_spot_vm(fake, gcs_bucket, tmp_path):
  """A plain spot VM (no queued resource) PREEMPTED: babysit deletes the VM and creates
  it again (``tpu-vm delete``, ``tpu-vm create``)."""
  env = _pod_env(fake)
  assert launcher("create", "pod", *WHERE, "--accelerator-type=v4-16", "--spot",
                  env=env).returncode == 0
  (Path(env["FAKE_GCLOUD_STATE"]) / "vms" / "pod.preempt").write_text("")
  assert "pod: PREEMPTED v4-16 2 workers" in _status("pod", env)
  result = _babysit_quick(env, tmp_path, "--spot")
  assert result.returncode == 2, result.stderr  # the job's own failure: not retried
  assert "pod: VM PREEMPTED: deleting it to create it again" in result.stderr
  assert len(_calls(env, "tpu-vm", "delete", "pod")) == 1
  assert len(_calls(env, "tpu-vm", "create", "pod")) == 2
  assert not _calls(env, "queued-resources", "create")
