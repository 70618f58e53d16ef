"""keras_cdm.callbacks.BackupAndRestore against real SIGKILLs: at random instants, and inside
the backup writes (halfway through the weights file, and between it and the metadata).

Every killed run is resumed and must end at exactly the weights and EMA of an uninterrupted
run, for save_freq="epoch" and for integer save_freq (1 and 3: backups mid-epoch, resumed
without replaying the epoch's first batches). A run whose weights become NaN, stopped by
TerminateOnNaN, must leave the last finite backup, which a rerun resumes from.

The killed runs are separate processes (tests/backup_worker.py); the resumes and the
uninterrupted reference run one after the other in one more process. CDM_BACKUP_KILL_TRIALS
(default 2) sets the number of random kills, spread over save_freq "epoch", 1 and 3 in turn.
The same trials with Keras' own callback, for comparison (it is expected to fail some):

    python -m tests.backup_resume_test keras epoch 16    # CALLBACK SAVE_FREQ TRIALS
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.backup_worker import BATCH, EPOCHS, IMAGES

ROOT = Path(__file__).resolve().parent.parent
STEPS = EPOCHS * IMAGES // BATCH
TRIALS = int(os.environ.get("CDM_BACKUP_KILL_TRIALS", "2"))
TIMEOUT = 600
RANDOM_ATTEMPTS = 5  # draws of a random kill instant before the run counts as not killed


def _argv(jobs):
    return [sys.executable, "-m", "tests.backup_worker", json.dumps(jobs)]


def _run_jobs(jobs, log):
    with open(log, "w") as stderr:
        done = subprocess.run(_argv(jobs), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, timeout=TIMEOUT)
    assert done.returncode == 0, Path(log).read_text()[-3000:]


def _kill_at_random(job, seed, log, window=None, surely=False):
    """Runs one job and SIGKILLs it at a random instant once its train function is traced
    (the second batch began). With `window` (seconds, the length of the rest of an
    uninterrupted run): a uniform instant in it. Without: after a random batch from the
    third on, a random delay up to 1.5 times the longest interval between two batches so
    far (a batch, and the backup written after it). `surely`: at once after a random batch
    before the last, so `fit` cannot have ended whatever the machine's speed. Returns the
    return code and whether `fit` had ended before the kill."""
    rng = np.random.default_rng(seed)
    target = int(rng.integers(3, STEPS if surely else STEPS + 1))
    with open(log, "w") as stderr:
        process = subprocess.Popen(_argv([dict(job, report=True)]), cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True)
        watchdog = threading.Timer(TIMEOUT, process.kill)
        watchdog.start()
        try:
            times, ended = [], False
            for line in process.stdout:
                ended = ended or line.startswith("END")
                if line.startswith("STEP"):
                    times.append(time.monotonic())
                if window is not None and len(times) == 2:
                    time.sleep(rng.uniform(0, window))
                    break
                if window is None and len(times) == target:
                    if not surely:
                        time.sleep(rng.uniform(0, 1.5 * max(np.diff(times[1:]))))
                    break
            process.send_signal(signal.SIGKILL)
            ended = ended or "END" in process.stdout.read()
            return process.wait(), ended
        finally:
            watchdog.cancel()


def training_window(job, log):
    """Seconds from the second batch of an uninterrupted run of `job` to the end of `fit`."""
    with open(log, "w") as stderr:
        lines = subprocess.Popen(_argv([dict(job, report=True)]), cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                 text=True)
        times = [(line.split()[0], time.monotonic()) for line in lines.stdout]
        assert lines.wait() == 0, Path(log).read_text()[-3000:]
    steps = [t for kind, t in times if kind == "STEP"]
    return next(t for kind, t in times if kind == "END") - steps[1]


def _kill_inside(job, log):
    with open(log, "w") as stderr:
        return subprocess.run(_argv([job]), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                              timeout=TIMEOUT).returncode


def _outcome(out, reference):
    if Path(out + ".error").exists():
        error = json.loads(Path(out + ".error").read_text())
        return {"result": "failed", "error": f"{error['type']}: {error['message'][:300]}"}
    result = np.load(out)
    diff = max(float(np.max(np.abs(result["weights"] - reference["weights"]))),
               float(np.max(np.abs(result["ema"] - reference["ema"]))))
    exact = diff == 0 and int(result["iterations"]) == int(reference["iterations"])
    return {"result": "exact" if exact else "inexact", "max_diff": diff, "iterations": int(result["iterations"])}


def run_trials(folder, trials, extra_jobs=(), prepare=None, seed=0, windows=None):
    """Kills each trial's run (two at a time), then resumes them all in one process, after an
    uninterrupted reference run; returns (reference, {name: trial with its outcome}).

    A trial: {"name", "job"} and "kill_in" (deterministic) or not (a random instant, in
    `windows[save_freq]` seconds when given, see `_kill_at_random`)."""
    folder = Path(folder)
    trials = [dict(trial, job=dict(trial["job"], backup=str(folder / trial["name"]))) for trial in trials]

    def kill(item):
        index, trial = item
        log = folder / f"{trial['name']}.killed.log"
        ended = False
        if trial.get("kill_in"):
            code = _kill_inside(dict(trial["job"], kill_in=trial["kill_in"], out=str(folder / "unused.npz")), log)
        else:
            # A random instant can fall after `fit` ended (the last batch, then a long delay):
            # that run was not interrupted, so it tests nothing; draw another instant. The
            # finished run deleted its backup folder, so the next attempt starts afresh. On a
            # slow machine one long interval (the first backup) can make every delay too long:
            # the last attempt kills right after a batch before the last one.
            window = None if windows is None else windows[trial["job"]["save_freq"]]
            for attempt in range(RANDOM_ATTEMPTS):
                last = attempt == RANDOM_ATTEMPTS - 1
                code, ended = _kill_at_random(dict(trial["job"], out=str(folder / f"{trial['name']}.finished.npz")),
                                              (seed * 100_003 + index) * RANDOM_ATTEMPTS + attempt, log,
                                              None if last else window, surely=last)
                if code == -signal.SIGKILL and not ended:
                    break
        backup = Path(trial["job"]["backup"])
        return dict(trial, returncode=code, killed=code == -signal.SIGKILL and not ended,
                    left=sorted(p.name for p in backup.iterdir()) if backup.is_dir() else [])

    with ThreadPoolExecutor(2) as pool:
        trials = list(pool.map(kill, enumerate(trials)))
    if prepare is not None:
        prepare(folder, trials)
    jobs = [{"backup": str(folder / "reference"), "out": str(folder / "reference.npz")},
            {"backup": str(folder / "reference-pipeline"), "out": str(folder / "reference-pipeline.npz"),
             "pipeline": True}]
    jobs += [dict(trial["job"], out=str(folder / f"{trial['name']}.npz")) for trial in trials]
    jobs += [dict(job, backup=str(folder / job["backup"]), out=str(folder / job["out"])) for job in extra_jobs]
    _run_jobs(jobs, folder / "resume.log")
    references = {False: np.load(folder / "reference.npz"), True: np.load(folder / "reference-pipeline.npz")}
    for reference in references.values():
        assert int(reference["iterations"]) == STEPS
    # the pipeline's shuffles and flips make another run than the arrays' fixed order
    assert not np.array_equal(references[True]["weights"], references[False]["weights"])
    for trial in trials:
        trial.update(_outcome(str(folder / f"{trial['name']}.npz"), references[bool(trial["job"].get("pipeline"))]))
    return references[False], {trial["name"]: trial for trial in trials}


def random_trials(callback, save_freqs, count):
    """`count` random kills, with the save_freqs in turn."""
    return [{"name": f"random-{callback}-{save_freqs[i % len(save_freqs)]}-{i}",
             "job": {"callback": callback, "save_freq": save_freqs[i % len(save_freqs)]}} for i in range(count)]


# -- the tests ----------------------------------------------------------------------------------

DETERMINISTIC = [
    # Killed halfway through writing the weights of the 2nd backup (after batch 2 of epoch 2):
    # the 1st backup (after batch 3 of epoch 1) is restored and batch 4 of epoch 1 comes next.
    {"name": "write-3", "kill_in": "write:2", "job": {"save_freq": 3}},
    # The 3rd backup's weights written (end of epoch 3), its metadata not. With
    # double_checkpoint; the last backup (end of epoch 2) is then damaged on purpose, and the
    # previous one (end of epoch 1) is used.
    {"name": "commit-double", "kill_in": "commit:3", "job": {"save_freq": "epoch", "double": True}},
    # A keras_cdm.data pipeline (shuffled, flipped): resumed in a new process, mid-epoch 1
    # (the backup after its batch 1; batch 2's write killed) and at the start of epoch 2
    # (the backup at the end of epoch 2 not committed).
    {"name": "pipeline-write-1", "kill_in": "write:6", "job": {"save_freq": 1, "pipeline": True}},
    {"name": "pipeline-commit-epoch", "kill_in": "commit:3", "job": {"save_freq": "epoch", "pipeline": True}},
    # Two batches per call of the train function: killed in the 2nd backup's write (after
    # batch 4 of epoch 1), resumed from the 1st (after batch 2) by skipping one call's batches.
    {"name": "two-steps-per-execution", "kill_in": "write:2", "job": {"save_freq": 2, "steps_per_execution": 2}},
]
NAN_JOBS = [
    # the weights become NaN after step 6: TerminateOnNaN stops the run at step 7; then the
    # same folder, rerun without the NaN, resumes from the last finite backup
    {"backup": "nan-epoch", "out": "nan-epoch-stopped.npz", "poison_at": 6},
    {"backup": "nan-epoch", "out": "nan-epoch-resumed.npz", "terminate_on_nan": True},
    {"backup": "nan-1", "out": "nan-1-stopped.npz", "poison_at": 6, "save_freq": 1},
    {"backup": "nan-1", "out": "nan-1-resumed.npz", "terminate_on_nan": True, "save_freq": 1},
]
DAMAGED_JOBS = [{"backup": "damaged", "out": "damaged.npz"}, {"backup": "damaged-keras", "out": "damaged-keras.npz"}]


def _prepare(folder, trials):
    """Damages backups: the last one of the "commit-double" trial (its previous one stays),
    a copy of it without the previous one, and a folder in Keras' own layout."""
    double = folder / "commit-double"
    current = json.loads((double / "training_metadata.json").read_text())["weights"]
    truncate(double / current)
    shutil.copytree(double, folder / "damaged")
    (folder / "damaged" / "training_metadata.json.bkp").unlink()
    (folder / "damaged-keras").mkdir()
    shutil.copy(double / current, folder / "damaged-keras" / "latest.weights.h5")
    (folder / "damaged-keras" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')


def truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backups")

    def prepare(folder, done):
        for trial in done:
            metadata = Path(trial["job"]["backup"]) / "training_metadata.json"
            trial["metadata"] = json.loads(metadata.read_text()) if metadata.exists() else None
        _prepare(folder, done)

    reference, done = run_trials(folder, DETERMINISTIC + random_trials("cdm", ("epoch", 1, 3), TRIALS),
                                 NAN_JOBS + DAMAGED_JOBS, prepare, seed=int(time.time()))
    return folder, reference, done


def _assert_exact(folder, name, reference):
    result = np.load(folder / name)
    assert int(result["iterations"]) == STEPS
    np.testing.assert_array_equal(result["weights"], reference["weights"])
    np.testing.assert_array_equal(result["ema"], reference["ema"])


def test_random_kills_resume_exactly(trials):
    folder, reference, done = trials
    if TRIALS == 0:
        pytest.skip("CDM_BACKUP_KILL_TRIALS=0 (make test draws random kills in the TensorFlow pass only)")
    randoms = [trial for trial in done.values() if trial["name"].startswith("random")]
    assert len(randoms) == TRIALS
    for trial in randoms:
        assert trial["returncode"] == -signal.SIGKILL, trial
        assert trial["result"] == "exact", trial
        assert not Path(trial["job"]["backup"]).exists()  # deleted at the end of the resumed run


def test_kills_inside_backup_writes_resume_exactly(trials):
    folder, reference, done = trials
    # (epoch, batch, optimizer steps) of the backup on disk after the kill
    cases = [("write-3", (0, 3, 3), 2), ("commit-double", (2, 0, 8), 3), ("two-steps-per-execution", (0, 2, 2), 2)]
    if keras.backend.backend() == "torch":  # Keras' PyTorch trainer runs one step per call
        error = json.loads((folder / "two-steps-per-execution.npz.error").read_text())
        assert "`steps_per_execution` must be 1 with the PyTorch backend" in error["message"]
        cases.pop()
    for name, position, weights_files in cases:
        trial = done[name]
        assert trial["returncode"] == -signal.SIGKILL
        metadata = trial["metadata"]
        assert (metadata["epoch"], metadata["batch"], metadata["iterations"]) == position
        # Beside the committed backup(s): the killed write's file, partial or not committed.
        assert len([name for name in trial["left"] if name.endswith(".weights.h5")]) == weights_files
        _assert_exact(folder, f"{name}.npz", reference)
        assert not (folder / name).exists()
    # commit-double resumed from its previous backup: its last one was damaged on purpose.
    assert "Resumed from the previous backup (at the end of epoch 1)" in (folder / "resume.log").read_text()


def test_a_shuffled_flipped_pipeline_resumes_exactly_in_a_new_process(trials):
    """keras_cdm.data draws each epoch's order and flips from the epoch that fit sets, so
    the resumed process sees the batches the killed one would have seen."""
    folder, reference, done = trials
    for name in ("pipeline-write-1", "pipeline-commit-epoch"):
        trial = done[name]
        assert trial["returncode"] == -signal.SIGKILL and trial["metadata"] is not None, trial
        assert trial["result"] == "exact", trial
    for name, position in (("pipeline-write-1", (1, 1, 5)), ("pipeline-commit-epoch", (2, 0, 8))):
        metadata = done[name]["metadata"]  # (epoch, batch, optimizer steps) of the backup resumed from
        assert (metadata["epoch"], metadata["batch"], metadata["iterations"]) == position


def test_nan_keeps_the_last_finite_backup_and_a_rerun_resumes_from_it(trials):
    folder, reference, done = trials
    for name, iterations in (("nan-epoch", 4), ("nan-1", 6)):
        stopped = np.load(folder / f"{name}-stopped.npz")
        # The stopped run's model was put back to the last finite backup.
        assert int(stopped["iterations"]) == iterations and np.isfinite(stopped["weights"]).all()
        assert np.isfinite(stopped["ema"]).all()
        _assert_exact(folder, f"{name}-resumed.npz", reference)
        assert not (folder / name).exists()
    log = (folder / "resume.log").read_text()
    assert "training ended with non-finite weights" in log and "the folder is kept" in log


def test_a_damaged_backup_fails_with_a_clear_error(trials):
    folder, reference, done = trials
    for name in ("damaged", "damaged-keras"):
        error = json.loads((folder / f"{name}.npz.error").read_text())
        print(error["message"])
        assert error["type"] == "ValueError"
        assert error["message"].startswith(f"Cannot resume training from the backup in {folder / name}: ")
        assert ".weights.h5 cannot be restored (" in error["message"]
        assert f"Delete the folder {folder / name} to train from the start" in error["message"]


@pytest.mark.backend_neutral
@pytest.mark.parametrize("save_freq", [0, -1, True, False, 2.0, "batch", None])
def test_save_freq_must_be_epoch_or_a_positive_integer(save_freq, tmp_path):
    from keras_cdm.callbacks import BackupAndRestore

    with pytest.raises(ValueError, match="`save_freq` must be 'epoch' or a positive integer"):
        BackupAndRestore(tmp_path, save_freq=save_freq)


@pytest.mark.backend_neutral
def test_backup_dir_must_be_a_local_folder():
    from keras_cdm.callbacks import BackupAndRestore

    for backup_dir in ("", None, 3):
        with pytest.raises(ValueError, match="`backup_dir` must be a non-empty path"):
            BackupAndRestore(backup_dir)
    with pytest.raises(ValueError, match="local folder"):
        BackupAndRestore("gs://bucket/backup")
    with pytest.raises(ValueError, match="`double_checkpoint` must be True or False"):
        BackupAndRestore("backup", double_checkpoint="yes")


def main(callback, save_freq, count):
    """Measures: `count` random kills with `callback` ("keras" or "cdm"), each resumed."""
    import tempfile

    save_freq = save_freq if save_freq == "epoch" else int(save_freq)
    with tempfile.TemporaryDirectory() as folder:
        job = {"callback": callback, "save_freq": save_freq}
        window = training_window(dict(job, backup=f"{folder}/calibration", out=f"{folder}/calibration.npz"),
                                 f"{folder}/calibration.log")
        print(f"an uninterrupted run trains for {window:.2f} s after its train function is traced")
        _, done = run_trials(folder, random_trials(callback, (save_freq,), count), seed=int(time.time()),
                             windows={save_freq: 1.1 * window})
    counts = {}
    for trial in done.values():
        killed = "killed" if trial["killed"] else "not killed before its end"
        counts[(killed, trial["result"])] = counts.get((killed, trial["result"]), 0) + 1
        detail = trial.get("error") or f"max |diff| {trial['max_diff']:.3g}"
        print(f"{trial['name']}: {killed}, resumed: {trial['result']} ({detail}); left {trial['left']}")
    print(f"{callback}, save_freq={save_freq}: {count} trials:",
          ", ".join(f"{n} {k}, resume {r}" for (k, r), n in sorted(counts.items())))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
