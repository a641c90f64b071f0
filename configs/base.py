"""The library defaults (``jaxprune.config.base_config``): MiniLM-L6 on SST-2, 90% sparse.

What ``jaxprune`` uses when ``--config`` is not given (except ``--mode=demo``, which
uses configs/demo.py's). ``jaxprune-tpu run`` passes it to a job without ``--config``
so that ``--config.coordinator_address=auto`` has a config to set: a pod's workers then
know their place even in modes that need no other setting, e.g.

  jaxprune-tpu run pod -- --mode=export --workdir=gs://bucket/runs/rte-sparse --format=sparse

Runtime and result: those of the mode run with it (training on the full SST-2 with
these defaults takes hours on a CPU; use configs/minilm_glue.py or configs/demo.py).
"""

from jaxprune.config import base_config


def get_config():
  return base_config()
