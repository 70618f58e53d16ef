"""Checkpoints, resume after a real SIGKILL, and Keras callbacks with a DiffusionModel."""

import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.resume_worker import EPOCHS

ROOT = Path(__file__).resolve().parent.parent


def _worker(backup, out, kill_after=None):
    argv = [sys.executable, "-m", "tests.resume_worker", str(backup), str(out)]
    argv += [] if kill_after is None else [str(kill_after)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_sigkilled_run_resumes_to_the_same_weights_and_ema(tmp_path):
    uninterrupted = _worker(tmp_path / "a", tmp_path / "a.npz")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    killed = _worker(tmp_path / "b", tmp_path / "b.npz", kill_after=1)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "b.npz").exists() and (tmp_path / "b" / "latest.weights.h5").exists()
    resumed = _worker(tmp_path / "b", tmp_path / "b.npz")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert int(a["iterations"]) == int(b["iterations"]) == EPOCHS * 4
    np.testing.assert_array_equal(b["weights"], a["weights"])  # training weights, seed states included
    np.testing.assert_array_equal(b["ema"], a["ema"])          # the optimizer's EMA


def test_model_checkpoint_and_terminate_on_nan(tmp_path):
    from tests.diffusion_model_test import base_stage

    model = base_stage(seed=0)
    model.compile()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    data = {"images": images, "labels": np.arange(8) % 10}
    path = tmp_path / "epoch{epoch}.weights.h5"
    model.fit(data, epochs=2, batch_size=4, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True)])
    assert (tmp_path / "epoch1.weights.h5").exists() and (tmp_path / "epoch2.weights.h5").exists()
    clone = base_stage(seed=0)
    clone.compile()
    clone.optimizer.build(clone.trainable_variables)
    clone.load_weights(tmp_path / "epoch2.weights.h5")
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    poisoned = {"images": np.full_like(images, np.nan), "labels": data["labels"]}
    history = model.fit(poisoned, epochs=3, batch_size=4, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and not np.isfinite(history.history["loss"][0])
