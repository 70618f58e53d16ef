"""A preset saved under one Keras backend loads and samples under the other two.

Each backend runs in its own process: first each saves a stage preset and a cascade
preset (and samples them back), then each loads the other two backends' presets, checks
every weight bit-for-bit and samples the same images as from its own copy
(tests/cross_backend_presets_worker.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")
pytestmark = pytest.mark.backend_neutral  # each backend runs in its own subprocess


def _phase(tmp_path, phase):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           # JAX compiles each loaded copy's samplers again: the copies are identical, so their
           # compilations are found in this cache (the run's own, in tmp_path).
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
           # three processes at once: one thread each rather than each taking every core
           "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    processes = {b: subprocess.Popen([sys.executable, "-m", "tests.cross_backend_presets_worker", b, str(tmp_path),
                                      phase], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True) for b in BACKENDS}
    results = {}
    for backend, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{phase} under {backend}:\n{err[-3000:]}"
        results[backend] = json.loads(out.strip().splitlines()[-1])
    return results


def test_presets_saved_under_each_backend_load_and_sample_under_the_others(tmp_path):
    saved = _phase(tmp_path, "save")
    assert all((tmp_path / b / "cascade" / "sr32" / "model.weights.h5").is_file() for b in BACKENDS), saved
    loaded = _phase(tmp_path, "load")
    assert {r["phase"] for r in loaded.values()} == {"load"}
