"""Two processes on 127.0.0.1 (two fake CPU devices each) train like one process.

Each process runs tests/multiprocess_worker.py on a 2 (data) x 2 (model) mesh over the
4 global devices: the data axis spans the processes (each feeds only its half of every
batch, through ``jax.make_array_from_process_local_data``) and the model axis the two
devices of a process. Both must end with the single-device run's losses and params.
"""

import socket

import numpy as np
import pytest

import multiprocess_worker as worker
from test_sharding import assert_matches_reference, launch_worker, load, wait

MESH = "2x2"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  coordinator = f"127.0.0.1:{free_port()}"
  procs = [launch_worker(tmp_path, MESH, 2, "--coordinator", coordinator,
                         "--num-processes", "2", "--process-id", str(i)) for i in range(2)]
  try:
    worker.reference()  # meanwhile, in this process
  finally:
    wait(procs, tmp_path)
  results = [load(tmp_path, f"mesh{MESH}_p{i}") for i in range(2)]
  for arrays, checks in results:
    assert checks["process_count"] == 2
    assert_matches_reference(arrays)
    assert checks["mask_mismatch"] == [] and checks["mu_mismatch"] == []
  # Both processes report the same (replicated) metrics.
  for name, value in results[0][0].items():
    np.testing.assert_array_equal(results[1][0][name], value, err_msg=name)
