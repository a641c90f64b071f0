"""jaxprune-tpu: start, watch, resume and tear down jaxprune jobs on Cloud TPU VMs.

  jaxprune-tpu create NAME --accelerator-type=v4-32 [--spot|--reserved] [--queued [--valid-until=6h]]
  jaxprune-tpu create NAME --accelerator-type=v5litepod-256 --num-slices=4 --spot   # multislice
  jaxprune-tpu setup NAME --local | --ref=GIT_REF
  jaxprune-tpu run NAME -- --mode=prune --config=configs/reference.py --workdir=gs://BUCKET/run
  jaxprune-tpu babysit NAME --accelerator-type=v4-32 --spot --local -- <jaxprune flags>
  jaxprune-tpu run NAME --detach -- <jaxprune flags>       # start and return; --restart: replace a running job
  jaxprune-tpu status [NAME] | logs NAME [--worker=all] [--follow] | stop NAME
  jaxprune-tpu ssh NAME [--worker=1] [-- CMD]
  jaxprune-tpu delete NAME [--yes]

Every subcommand takes --dry-run (print the gcloud commands, run none). Project, zone,
bucket and accelerator type default to $JAXPRUNE_TPU_<NAME> or ~/.config/jaxprune/tpu.toml.
See launch/README.md.
"""

from __future__ import annotations

import sys

from absl import flags

from jaxprune.launch import commands
from jaxprune.launch import gcloud
from jaxprune.launch import settings
from jaxprune.launch.runner import Runner
from jaxprune.launch.settings import LaunchError

FLAGS = flags.FlagValues()

for _name, _help in settings.FIELDS.items():
  flags.DEFINE_string(_name.replace("_", "-"), None, _help[0].upper() + _help[1:] + ".",
                      flag_values=FLAGS)
flags.DEFINE_string("runtime-version", None, "TPU software version (default: the one for the "
                    "accelerator's generation).", flag_values=FLAGS)
flags.DEFINE_boolean("spot", False, "Spot capacity: cheaper, can be preempted at any time.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("reserved", False, "Capacity from the project's reservation.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("queued", False, "Create through a queued resource (waits for capacity; "
                     "retries RESOURCE_EXHAUSTED with backoff).", flag_values=FLAGS)
flags.DEFINE_string("valid-until", None, "With --queued: the request expires unfilled after "
                    "this duration (e.g. 6h, 2d).", flag_values=FLAGS)
flags.DEFINE_boolean("local", False, "setup: install this checkout (a tarball via scp).",
                     flag_values=FLAGS)
flags.DEFINE_string("ref", None, "setup: install this git ref of --repo.", flag_values=FLAGS)
flags.DEFINE_string("extras", "gcs", "setup: jaxprune's extras to install.", flag_values=FLAGS)
flags.DEFINE_string("jax-version", None, "setup: the jax[tpu] version (default: the jax "
                    "installed here).", flag_values=FLAGS)
flags.DEFINE_integer("retries", 5, "babysit: re-creations after preemptions.",
                     flag_values=FLAGS)
flags.DEFINE_integer("create-retries", 8, "create: retries after RESOURCE_EXHAUSTED (no "
                     "capacity in the zone).", flag_values=FLAGS)
flags.DEFINE_float("retry-wait", 60.0, "create: first backoff in seconds (doubles); babysit: "
                   "the wait before retrying setup.", flag_values=FLAGS)
flags.DEFINE_integer("setup-retries", 3, "babysit: retries of a failed setup.",
                     flag_values=FLAGS)
flags.DEFINE_float("poll", 30.0, "Seconds between checks of a queued resource.",
                   flag_values=FLAGS)
flags.DEFINE_integer("grace", 30, "Seconds a stopped job gets to save before SIGKILL.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("yes", False, "delete: do not ask.", flag_values=FLAGS)
flags.DEFINE_boolean("dry-run", False, "Print the gcloud commands; run none.",
                     flag_values=FLAGS)
flags.DEFINE_string("settings", None, "Settings file (default $JAXPRUNE_TPU_SETTINGS or "
                    "~/.config/jaxprune/tpu.toml).", flag_values=FLAGS)
flags.DEFINE_string("run-name", None, "run/babysit/logs: the run's name under "
                    "logs/NAME/ (default: the start time).", flag_values=FLAGS)
flags.DEFINE_string("logs-dir", "logs", "Where run streams the workers' logs.",
                    flag_values=FLAGS)
flags.DEFINE_string("worker", None, "ssh/logs/stop: worker index (default: ssh and logs 0, "
                    "stop all; logs and stop: or all).", flag_values=FLAGS)
flags.DEFINE_boolean("detach", False, "run: return once the job started on every worker "
                     "(it runs detached either way; follow it with logs --follow).",
                     flag_values=FLAGS)
flags.DEFINE_boolean("restart", False, "run: stop another run still running on the "
                     "workers first (without it, run refuses to start over one).",
                     flag_values=FLAGS)
flags.DEFINE_boolean("follow", False, "logs: stream the log from the workers until the job "
                     "ends.", flag_values=FLAGS)
flags.DEFINE_boolean("internal-ip", False, "Create VMs without external IPs (--internal-ips) "
                     "and reach them by internal IP (ssh/scp --internal-ip): for "
                     "organisations that forbid external IPs; run the launcher inside the VPC.",
                     flag_values=FLAGS)
flags.DEFINE_string("network", None, "create: the VPC network.", flag_values=FLAGS)
flags.DEFINE_string("subnetwork", None, "create: the subnetwork.", flag_values=FLAGS)
flags.DEFINE_string("service-account", None, "create: the service account the VMs run as "
                    "(it needs read/write on the bucket).", flag_values=FLAGS)
flags.DEFINE_string("scopes", None, "create: the VMs' access scopes (e.g. cloud-platform).",
                    flag_values=FLAGS)
flags.DEFINE_string("labels", None, "create: labels, k=v,k2=v2 (cost tracking).",
                    flag_values=FLAGS)
flags.DEFINE_integer("num-slices", 1, "Multislice: this many slices of --accelerator-type "
                     "(one queued resource NAME, VMs NAME-0 ...; implies --queued); give it "
                     "to every command that acts on them.", flag_values=FLAGS)
flags.DEFINE_multi_string("env", [], "run/babysit: KEY=VALUE in the job's environment on "
                          "every worker (repeatable).", flag_values=FLAGS)

_CREATE = {"accelerator-type", "runtime-version", "spot", "reserved", "queued", "valid-until",
           "create-retries", "retry-wait", "poll", "network", "subnetwork", "service-account",
           "scopes", "labels"}
_SETUP = {"local", "ref", "repo", "extras", "jax-version"}
_RUN = {"bucket", "accelerator-type", "run-name", "logs-dir", "grace", "restart", "env"}
_COMMON = {"project", "zone", "dry-run", "settings", "internal-ip"}
_SLICES = {"num-slices"}  # every command that acts on the VMs but ssh
# The flags each subcommand takes.
ALLOWED = {
    "create": _CREATE | _SLICES,
    "setup": _SETUP | _SLICES,
    "run": _RUN | _SLICES | {"detach"},
    "babysit": _CREATE | _SETUP | _RUN | _SLICES | {"retries", "setup-retries"},
    "status": _SLICES | {"queued", "logs-dir", "accelerator-type"},
    "logs": _SLICES | {"run-name", "logs-dir", "worker", "follow", "accelerator-type"},
    "stop": _SLICES | {"worker", "grace", "accelerator-type"},
    "ssh": {"worker"},  # a slice of a multislice job by its VM name: ssh NAME-1
    "delete": _SLICES | {"yes", "queued"},
}


def _options(rest: list[str]) -> commands.Options:
  if FLAGS["spot"].value and FLAGS["reserved"].value:
    raise LaunchError("--spot and --reserved exclude each other")
  capacity = "spot" if FLAGS["spot"].value else "reserved" if FLAGS["reserved"].value \
      else "on-demand"
  value = lambda name: FLAGS[name].value  # noqa: E731
  return commands.Options(
      accelerator_type=value("accelerator-type"), runtime_version=value("runtime-version"),
      capacity=capacity, queued=value("queued"), valid_until=value("valid-until"),
      local=value("local"), ref=value("ref"), extras=value("extras"),
      jax_version=value("jax-version"), retries=value("retries"),
      create_retries=value("create-retries"), retry_wait=value("retry-wait"),
      poll=value("poll"), yes=value("yes"), setup_retries=value("setup-retries"),
      run_name=value("run-name"),
      logs_dir=value("logs-dir"), worker=value("worker"), grace=value("grace"),
      detach=value("detach"), restart=value("restart"), follow=value("follow"),
      env=list(value("env")), internal_ip=value("internal-ip"),
      num_slices=value("num-slices"),
      network=gcloud.Network(internal_ips=value("internal-ip"), network=value("network"),
                             subnetwork=value("subnetwork"),
                             service_account=value("service-account"),
                             scopes=value("scopes"), labels=value("labels")),
      rest=rest)


def _command_help(command: str) -> int:
  """``jaxprune-tpu COMMAND --help``: what it does and the flags it takes."""
  if command not in commands.COMMANDS:
    raise LaunchError(f"expected a subcommand ({', '.join(commands.COMMANDS)}), got "
                      f"{command!r}")
  doc = " ".join((commands.COMMANDS[command].__doc__ or "").split())
  usage = [line.strip() for line in __doc__.splitlines()
           if line.strip().startswith(f"jaxprune-tpu {command}")
           or f"| {command} " in line]
  print(f"jaxprune-tpu {command}: {doc}\n")
  for line in usage:
    print(f"  {line}")
  print("\nFlags:")
  for name in sorted(ALLOWED[command] | _COMMON):
    flag = FLAGS[name]
    default = "" if flag.default in (None, False, []) else f" (default: {flag.default})"
    print(f"  --{name}: {flag.help}{default}")
  return 0


def main(argv: list[str]) -> int:
  """Parses ``argv`` (without the program name) and runs one subcommand.

  Example: ``main(["create", "pod", "--accelerator-type=v4-8", "--dry-run"])``.
  """
  rest: list[str] = []
  if "--" in argv:
    argv, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(__doc__ + "\nFlags:\n" + FLAGS.get_help())
    return 0
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
    return _command_help(argv[0])
  try:
    positional = FLAGS(["jaxprune-tpu", *argv])[1:]
  except flags.Error as e:
    raise LaunchError(" ".join(str(e).split())) from None
  if not positional or positional[0] not in commands.COMMANDS:
    raise LaunchError(f"expected a subcommand ({', '.join(commands.COMMANDS)}), got "
                      f"{positional[0] if positional else 'none'!r}")
  command, names = positional[0], positional[1:]
  if len(names) > 1:
    raise LaunchError(f"{command}: unexpected arguments {' '.join(names[1:])!r} (jaxprune "
                      "flags go after --)")
  if not names and command != "status":
    raise LaunchError(f"{command} needs the TPU's NAME: jaxprune-tpu {command} NAME ...")
  allowed = ALLOWED[command] | _COMMON
  for name in FLAGS:
    if FLAGS[name].present and name not in allowed:
      raise LaunchError(f"--{name} does not apply to {command}")
  if rest and command not in ("run", "babysit", "ssh"):
    raise LaunchError(f"{command} takes nothing after --")
  values = {name: FLAGS[name.replace("_", "-")].value for name in settings.FIELDS}
  s = settings.load(values, FLAGS["settings"].value)
  runner = Runner(dry_run=FLAGS["dry-run"].value)
  return commands.COMMANDS[command](names[0] if names else None, _options(rest), s, runner)


def run() -> None:
  """Console-script entry point: one-line errors (``jaxprune-tpu: error: ...``), exit 2."""
  try:
    code = main(sys.argv[1:])
  except LaunchError as e:
    print(f"jaxprune-tpu: error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("jaxprune-tpu: interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code)


if __name__ == "__main__":
  run()
