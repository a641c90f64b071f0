"""``python -m jaxprune.launch`` is ``jaxprune-tpu``."""

from jaxprune.launch.cli import run

run()
