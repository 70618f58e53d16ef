"""Training a stage under distribution strategies, each in its own process."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.backend_neutral  # each test picks its backend in a subprocess


def _run(*args, env=None, timeout=300):
    return subprocess.Popen([sys.executable, "-m", "tests.distributed_worker", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single():
    return _result(_run("single"))


def _same_objective(result, single):
    # The loss is an expectation over t and noise, estimated on 256 examples by each run
    # with its own random draws: equal within a few standard errors (per-example sd ~ 0.5).
    assert abs(result["loss"] - single["loss"]) < 0.08
    assert result["fit_loss"][-1] < result["fit_loss"][0]


def test_mirrored_strategy_on_two_logical_cpus(single):
    result = _result(_run("mirrored"))
    assert result["replicas"] == 2
    _same_objective(result, single)


def test_jax_data_parallel_on_two_host_devices(single):
    result = _result(_run("jax_data_parallel"))
    assert result["replicas"] == 2
    _same_objective(result, single)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_with_two_processes(single):
    ports = _free_ports(2)
    workers = [_run("multiworker", index, *ports) for index in range(2)]
    results = [_result(w, timeout=300) for w in workers]
    assert all(r["replicas"] == 2 for r in results)
    assert results[0]["weights_head"] == results[1]["weights_head"]  # all-reduced updates
    assert results[0]["weights_sum"] == results[1]["weights_sum"]
    _same_objective(results[0], single)
