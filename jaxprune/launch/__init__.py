"""``jaxprune-tpu``: start, watch, resume and tear down jaxprune jobs on Cloud TPU VMs.

Standard library and absl only (no jax at import: it runs on a laptop). Modules:

  accelerators.py  accelerator types -> generation, hosts, runtime version
  settings.py      project / zone / bucket ... from flags, JAXPRUNE_TPU_* or tpu.toml
  gcloud.py        the exact gcloud argument lists (pure functions)
  remote.py        the bash run on every worker (setup, job, stop)
  source.py        the tarball of a local checkout and its hash (setup --local)
  runner.py        runs gcloud commands, or prints them under --dry-run
  workers.py       one ssh per worker: log files, stop all when one fails
  commands.py      the subcommands
  cli.py           absl flags and dispatch (console script ``jaxprune-tpu``)

User documentation: launch/README.md.
"""
