"""Launcher defaults: a flag, else ``$JAXPRUNE_TPU_<NAME>``, else a small TOML file.

The file is ``--settings``, else ``$JAXPRUNE_TPU_SETTINGS``, else
``$XDG_CONFIG_HOME/jaxprune/tpu.toml`` (``~/.config/jaxprune/tpu.toml``), for example::

  project = "my-project"
  zone = "us-central2-b"
  bucket = "my-bucket"
  accelerator_type = "v4-8"

Example::

  s = load({"zone": "us-central2-b"}, environ={"JAXPRUNE_TPU_PROJECT": "p"})
  s.require("project", "zone")  # ("p", "us-central2-b")
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
import tomllib
from typing import Mapping

__all__ = ["FIELDS", "LaunchError", "Settings", "load", "settings_path"]

# name -> what it is, for the one-line error when it is missing.
FIELDS = {
    "project": "the Google Cloud project",
    "zone": "the zone of the TPU VMs",
    "bucket": "a gs:// bucket for work directories",
    "accelerator_type": "the TPU type (v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...)",
    "repo": "the git URL that setup --ref installs from",
}


class LaunchError(Exception):
  """A user error, printed as one line (``jaxprune-tpu: error: ...``) without traceback."""


def settings_path(flag: str | None = None, environ: Mapping[str, str] = os.environ) -> Path:
  """The settings file in use (it need not exist).

  Example: ``settings_path(environ={"HOME": "/home/me"})`` is
  ``/home/me/.config/jaxprune/tpu.toml``.
  """
  if flag or environ.get("JAXPRUNE_TPU_SETTINGS"):
    return Path(flag or environ["JAXPRUNE_TPU_SETTINGS"]).expanduser()
  config_home = environ.get("XDG_CONFIG_HOME") or str(
      Path(environ.get("HOME", "~")).expanduser() / ".config")
  return Path(config_home) / "jaxprune" / "tpu.toml"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Resolved defaults; a field is ``None`` when nothing set it."""
  values: Mapping[str, str | None]
  source: Path

  def get(self, name: str) -> str | None:
    return self.values.get(name)

  def require(self, *names: str) -> tuple[str, ...]:
    """The values of ``names``; a one-line ``LaunchError`` for the first one missing."""
    for name in names:
      if not self.values.get(name):
        raise LaunchError(
            f"no {name} ({FIELDS[name]}): pass --{name.replace('_', '-')}, set "
            f"JAXPRUNE_TPU_{name.upper()} or add {name} = \"...\" to {self.source}")
    return tuple(self.values[n] for n in names)


def load(flag_values: Mapping[str, str | None], settings_flag: str | None = None,
         environ: Mapping[str, str] = os.environ) -> Settings:
  """Merges flags over the environment over the settings file.

  Example: ``load({"zone": None}, environ={"JAXPRUNE_TPU_ZONE": "z"}).get("zone") == "z"``.
  """
  path = settings_path(settings_flag, environ)
  from_file: dict = {}
  if path.is_file():
    try:
      from_file = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
      raise LaunchError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(from_file) - set(FIELDS))
    if unknown:
      raise LaunchError(f"{path}: unknown setting {unknown[0]!r} (expected one of "
                        f"{', '.join(FIELDS)})")
  elif settings_flag:
    raise LaunchError(f"--settings={settings_flag}: no such file")
  values = {}
  for name in FIELDS:
    value = flag_values.get(name) or environ.get(f"JAXPRUNE_TPU_{name.upper()}") or \
        from_file.get(name)
    values[name] = str(value) if value else None
  return Settings(values, path)
