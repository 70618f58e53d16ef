"""The `keras-cdm` command prints only its own lines: no start-up chatter from TensorFlow,
XLA or PyTorch (keras_cdm_cli sets their logging defaults before Keras is imported)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import keras_cdm_cli

ROOT = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).with_name("keras-cdm")  # the console script of this environment
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Every line `keras-cdm sample` writes itself: the stage headers, Keras' progress bars, the result.
OWN_LINES = [
    re.compile(r"Stage \d/\d: \w+ \(\d+x\d+\)"),
    re.compile(r"\d+/\d+ ━+ +\d+m?s( \d+m?s/image)?"),
    re.compile(r"wrote \d+ samples \(32x32\) to \S+\.png in \d+\.\d s"),
]


BACKENDS = ("tensorflow", "jax", "torch")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """`keras-cdm sample` on each backend, the three processes at once (most of their time is
    imports and tracing, one core each): {backend: (return code, stdout, stderr)}."""
    folder = tmp_path_factory.mktemp("quiet")
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS")}
    processes = {backend: subprocess.Popen(
        [str(COMMAND), "sample", "--preset", "cdm_mnist32", "--labels", "3", "--steps", "2", "--batch-size", "1",
         "--out", str(folder / f"{backend}.png")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder,
        env={**environment, "KERAS_BACKEND": backend, "OMP_NUM_THREADS": "1"}) for backend in BACKENDS}
    results = {}
    for backend, process in processes.items():
        out, err = process.communicate(timeout=600)
        results[backend] = process.returncode, out, err
    return results


def _lines(text):
    return [line.strip() for line in re.split(r"[\r\n]", ANSI.sub("", text)) if line.strip()]


@pytest.mark.backend_neutral  # each backend in its own process
@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_prints_only_its_own_lines(samples, backend):
    code, out, err = samples[backend]
    assert code == 0, err[-3000:]
    lines = _lines(out + "\n" + err)
    foreign = [line for line in lines if not any(p.fullmatch(line) for p in OWN_LINES)]
    assert not foreign, f"lines keras-cdm did not write: {foreign}"
    assert sum(line.startswith("Stage ") for line in lines) == 3 and lines[-1].startswith("wrote 1 samples")


@pytest.mark.backend_neutral
def test_a_log_level_the_user_set_is_kept():
    """TF_CPP_MIN_LOG_LEVEL=0 set by the user: TensorFlow's start-up lines are shown, as in Python."""
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "0"}
    result = subprocess.run([str(COMMAND), "presets"], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0 and "cdm_mnist32" in result.stdout
    assert "oneDNN custom operations are on" in result.stderr


@pytest.mark.backend_neutral
@pytest.mark.parametrize("line,level,shown", [
    (b"I0000 00:00:1796645129.607338   10518 port.cc:153] oneDNN custom operations are on.\n", 3, False),
    (b"E0000 00:00:1796641202.307269   31333 cuda_platform.cc:52] failed call to cuInit\n", 3, False),
    (b"E0000 00:00:1796641202.307269   31333 cuda_platform.cc:52] failed call to cuInit\n", 2, True),
    (b"W0000 00:00:17.3 7 a.cc:1] w\n", 1, True),
    (b"W0000 00:00:17.3 7 a.cc:1] w\n", 2, False),
    (b"F0000 00:00:17.3 7 a.cc:1] fatal\n", 3, True),
    (b"2025-09-17 14:44:05.123: I tensorflow/core/util/port.cc:113] oneDNN\n", 1, False),
    (b"2025-09-17 14:44:05.123: I tensorflow/core/util/port.cc:113] oneDNN\n", 0, True),
    (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", 1, False),
    (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", 0, True),
    (b"Traceback (most recent call last):\n", 3, True),  # not a library log line: never held back
    (b"keras-cdm: error: something\n", 3, True),
])
def test_held_back_lines_pass_by_severity(line, level, shown):
    assert keras_cdm_cli._shown(line, level) is shown


@pytest.mark.backend_neutral
@pytest.mark.parametrize("argv,debug", [(["sample", "--debug"], True), (["--deb", "presets"], True),
                                        (["presets"], False), (["sample", "--", "--debug"], False)])
def test_debug_is_read_before_the_options_end(argv, debug):
    assert keras_cdm_cli._debug(argv) is debug
