"""JAX's keras.distribution across processes and devices, each run in its own processes
(tests/jax_distribution_worker.py): two processes on loopback, killed and resumed, and
sharded training on 8 virtual CPU devices. They run in the JAX pass of `make test` only
(the workers are JAX programs whatever the pass's backend; one pass is enough)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.distribution_test import _free_ports

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX workers: run in the JAX pass")

JAX_WORKER = "tests.jax_distribution_worker"


def _jax(*args, cache=None):
    env = dict(os.environ)
    if cache is not None:  # a restarted pair compiles what the killed one did: reuse it
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.Popen([sys.executable, "-m", JAX_WORKER, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finished(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]


def _jax_pair(outs, backup, slow=0.0):
    port = _free_ports(1)[0]
    return [_jax("process", index, port, outs[index], backup, slow, cache=backup.parent / "cache")
            for index in range(2)]


@pytest.fixture(scope="module")
def jax_reference(tmp_path_factory):
    """One process, one device, the same global batches: what the distributed runs must reach."""
    out = tmp_path_factory.mktemp("jax_reference") / "reference.npz"
    _finished(_jax("reference", out))
    return dict(np.load(out))


def _backup_metadata(backup):
    try:
        return json.loads((backup / "training_metadata.json").read_text())
    except (OSError, ValueError):
        return None


def _kill_after_first_backup(workers, backup):
    deadline = time.monotonic() + 240
    while (_backup_metadata(backup) or {}).get("iterations") is None:
        assert all(w.poll() is None for w in workers), "a worker ended before it was killed"
        assert time.monotonic() < deadline, "no backup was written"
        time.sleep(0.05)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    for worker in workers:
        worker.communicate()


def test_jax_data_parallel_over_two_processes_killed_and_resumed(jax_reference, tmp_path):
    """keras.distribution.DataParallel over two processes (one CPU device each, loopback
    coordinator), Keras sharding each global tf.data batch between them; both SIGKILLed
    once a backup is written (keras_cdm's BackupAndRestore, one shared folder), restarted:
    both end with the same state as one uninterrupted single-device run."""
    backup, outs = tmp_path / "backup", [tmp_path / f"process{i}.npz" for i in range(2)]
    _kill_after_first_backup(_jax_pair(outs, backup, slow=0.3), backup)
    killed_at = _backup_metadata(backup)["iterations"]
    assert 2 <= killed_at < 12 and not any(o.exists() for o in outs)  # killed mid-training
    workers = _jax_pair(outs, backup)
    for worker in workers:
        _finished(worker)
    first, second = (dict(np.load(o)) for o in outs)
    assert int(first["devices"]) == 2  # one CPU device in each process
    assert int(first["iterations"]) == int(jax_reference["iterations"]) == 12
    keys = [k for k in jax_reference if k != "iterations"]  # weights and EMA
    for key in keys:  # identical in both processes: one program over global arrays
        np.testing.assert_array_equal(first[key], second[key])
    for key in keys:  # the same steps as one process, up to float32 reduction order
        np.testing.assert_allclose(first[key], jax_reference[key], rtol=0, atol=2e-5, err_msg=key)
    # One shared backup folder, written by process 0 only.
    files = sorted(p.name for p in backup.glob("*.weights.h5"))
    assert files == [_backup_metadata(backup)["weights"]] and files[0].startswith(f"backup-{workers[0].pid}-")
    assert _backup_metadata(backup)["iterations"] == 12


def test_sharded_training_on_a_batch_by_model_mesh_of_8_devices(tmp_path):
    """keras_cdm.distribution.model_parallel on a 2 x 4 (batch x model) mesh of 8 virtual
    CPU devices: the same steps as one device; each device holds a quarter of every
    sharded variable and of its Adam moments and EMA (Keras shards them alike)."""
    _finished(_jax("sharded", tmp_path / "sharded.json"))
    report = json.loads((tmp_path / "sharded.json").read_text())
    assert report["devices"] == 8 and report["iterations"] == [3, 3]
    assert report["max_change"] > 1e-3  # the steps moved the weights...
    assert report["max_weight_diff"] < 1e-6 and report["max_ema_diff"] < 1e-6  # ...alike
    variables = report["variables"]
    spec = {(v["kind"], v["path"].replace("/", "_")): v["spec"] for v in variables}
    for v in variables:
        sharded = "model" in v["spec"]
        # the bytes one device holds: a quarter along the model axis, all of a replicated one
        assert v["device_bytes"] == (v["bytes"] // 4 if sharded else v["bytes"]), v
        if v["kind"] != "parameter":  # adam/<path>_momentum etc.: the layout of its variable
            path = v["path"].split("/", 1)[1].rsplit("_", 1)[0]
            assert v["spec"] == spec[("parameter", path)], v
    kinds = {k: [v for v in variables if v["kind"] == k] for k in ("parameter", "m", "v", "ema")}
    assert len({len(group) for group in kinds.values()}) == 1  # trainable U-Net weights: one m, v, EMA each
    sharded = [v for v in kinds["parameter"] if "model" in v["spec"]]
    assert {v["path"] for v in sharded} >= {"middle_attention/attention/query/kernel", "down_0_res_0/conv_in/kernel"}
    assert "model" not in spec[("parameter", "output_conv_kernel")]  # 1 output channel: replicated
    # Independent count: per device, full bytes / 4 for sharded variables, else full.
    held = {k: sum(v["bytes"] // (4 if "model" in v["spec"] else 1) for v in group) for k, group in kinds.items()}
    measured = {k: sum(v["device_bytes"] for v in group) for k, group in kinds.items()}
    assert measured == held
    full = sum(v["bytes"] for v in kinds["parameter"])
    assert held["parameter"] < full / 2  # most of the state is sharded
    assert report["predicted"] == {"parameters": measured["parameter"], "optimizer": measured["m"] + measured["v"],
                                   "ema": measured["ema"], "total": sum(measured.values())}
