"""Two real JAX processes (jax.distributed, gloo) each feed their part; the global batch equals one process's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from jasper_jax.data.pipeline import make_train_iterator
from tests.data.data_helpers import sample_texts

WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id = int(sys.argv[1])
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=process_id)
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jasper_jax.data.pipeline import host_row_range, make_train_iterator

mesh = jax.make_mesh((2, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
iterator = make_train_iterator(sys.argv[3], sys.argv[4], global_batch_size=8, mesh=mesh, max_length=64,
                               shuffle_seed=3, num_epochs=1)
out = {"rows": np.array(host_row_range(8, mesh))}
for step in range(6):
    batch = next(iterator)
    for key, value in multihost_utils.process_allgather(batch, tiled=True).items():
        out[f"{step}/{key}"] = np.asarray(value)
    out[f"{step}/local_rows"] = np.array(batch["input_ids"].addressable_shards[0].index[0].start or 0)
np.savez(os.path.join(sys.argv[5], f"process{process_id}.npz"), **out)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_build_the_same_global_batches(make_store, minilm_folder, tmp_path):
    store = make_store(sample_texts(45, seed=2), name="multihost")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.pop("XLA_FLAGS", None)
    address = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), address, str(store), str(minilm_folder), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(o[-3000:] for o in outputs)
    results = [np.load(tmp_path / f"process{i}.npz") for i in range(2)]
    assert results[0]["rows"].tolist() == [0, 4] and results[1]["rows"].tolist() == [4, 8]
    reference = make_train_iterator(
        store, str(minilm_folder), global_batch_size=8, mesh=None, max_length=64, shuffle_seed=3, num_epochs=1
    )
    for step in range(6):
        expected = next(reference)
        for key in ("input_ids", "attention_mask", "teacher", "row_mask"):
            for result in results:  # every process sees the same global batch, equal to one process's
                np.testing.assert_array_equal(result[f"{step}/{key}"], expected[key], err_msg=f"step {step} {key}")
    assert results[0]["5/row_mask"].tolist() == [True] * 5 + [False] * 3  # 45 rows: the last batch is padded
