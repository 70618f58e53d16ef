"""Trains a tiny stage with a BackupAndRestore callback, for tests that SIGKILL it.

    python -m tests.backup_worker JOBS_JSON

JOBS_JSON is a list of jobs, run one after the other in this process. Each job trains the
stage for EPOCHS epochs with a backup folder and writes `out` (final training weights, EMA,
optimizer iterations) or, when `fit` raises, `out + ".error"` (the exception's type and
message). The jobs share one model, so that one process (one TensorFlow start-up, one
traced train function) resumes many killed runs: before each job the model is put back to
its initial state (weights, optimizer and seed-generator states, from a file written at
the start), which is the state a fresh process builds.

A job's keys:
    backup, out            the backup folder and the result (.npz)
    callback               "cdm" (keras_cdm.callbacks.BackupAndRestore, default) or "keras"
    save_freq              "epoch" (default) or a number of batches
    kill_in                "write:N" or "commit:N": SIGKILL this process inside the N-th
                           (1-based) backup write: "write" halfway through the weights file
                           (the model's weights written, the optimizer's not), "commit" with the
                           weights file complete and the training metadata not yet written
    poison_at              after optimizer step N (1-based) a weight becomes NaN (so the loss
                           is NaN from step N + 1 on); with keras.callbacks.TerminateOnNaN
    terminate_on_nan       add keras.callbacks.TerminateOnNaN
    double                 double_checkpoint=True (keras_cdm's callback)
    report                 print "STEP <epoch> <batch>" (flushed) at every batch begin and
                           "END" after `fit`, for a parent that kills this process at a random
                           instant
"""

import json
import os
import signal
import sys
import tempfile

import keras
import numpy as np

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion

EPOCHS = 3
IMAGES, BATCH = 16, 4  # 4 steps an epoch


def build():
    keras.utils.set_random_seed(0)
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                         attention_resolutions=(), num_classes=4, num_groups=4, image_channels=1, dropout=0.1)
    model = DiffusionModel(unet, GaussianDiffusion(20, "cosine"), random_flip=True, seed=0)
    model.compile(learning_rate=1e-2, ema_momentum=0.9)
    model.optimizer.build(model.trainable_variables)
    return model


def data():
    rng = np.random.default_rng(0)
    return {"images": rng.uniform(-1, 1, (IMAGES, 8, 8, 1)).astype("float32"), "labels": np.arange(IMAGES) % 4}


class Report(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        print(f"STEP {self.epoch} {batch}", flush=True)


class Poison(keras.callbacks.Callback):
    """Makes a weight NaN after optimizer step `step` (placed after the backup callback)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        variables = self.model.trainable_variables
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == self.step:
            variables[0].assign(keras.ops.full(variables[0].shape, float("nan")))


def kill_inside_backups(model, where, count):
    """SIGKILLs this process inside the `count`-th backup write (see the module docstring)."""
    calls = {"n": 0}
    save_weights, save_own = model.save_weights, model.optimizer.save_own_variables

    def counted(*args, **kwargs):
        calls["n"] += 1
        result = save_weights(*args, **kwargs)
        if where == "commit" and calls["n"] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def killing(store):
        if where == "write" and calls["n"] == count:  # the model's weights are in the file
            os.kill(os.getpid(), signal.SIGKILL)
        return save_own(store)

    model.save_weights = counted
    model.optimizer.save_own_variables = killing


def run(model, job):
    save_freq = job.get("save_freq", "epoch")
    if job.get("callback", "cdm") == "keras":
        backup = keras.callbacks.BackupAndRestore(job["backup"], save_freq=save_freq)
    else:
        from keras_cdm.callbacks import BackupAndRestore

        backup = BackupAndRestore(job["backup"], save_freq=save_freq, double_checkpoint=job.get("double", False))
    callbacks = [backup]
    if job.get("poison_at") is not None:
        callbacks.append(Poison(job["poison_at"]))
    if job.get("poison_at") is not None or job.get("terminate_on_nan"):
        callbacks.append(keras.callbacks.TerminateOnNaN())
    if job.get("report"):
        callbacks.append(Report())
    if job.get("kill_in"):
        where, count = job["kill_in"].split(":")
        kill_inside_backups(model, where, int(count))
    out = job["out"]
    if model.steps_per_execution != job.get("steps_per_execution", 1):
        model.steps_per_execution = job.get("steps_per_execution", 1)
        model.train_function = None  # rebuilt by fit for the new steps_per_execution
    try:
        if job.get("pipeline"):  # a keras_cdm.data pipeline: shuffled and flipped anew each epoch
            from keras_cdm.data import from_arrays

            arrays = data()
            inputs = {"x": from_arrays(arrays["images"], arrays["labels"], batch_size=BATCH, seed=0,
                                       random_flip=True)}
        else:
            inputs = {"x": data(), "batch_size": BATCH, "shuffle": False}
        history = model.fit(**inputs, epochs=job.get("epochs", EPOCHS), callbacks=callbacks, verbose=0)
    except Exception as error:  # recorded for the parent, which counts failed resumes
        with open(out + ".error", "w") as f:
            json.dump({"type": type(error).__name__, "message": str(error)[:3000]}, f)
        return
    finally:
        model._initial_epoch = None  # keras' callback leaves it set
    if job.get("report"):
        print("END", flush=True)
    averages = model.optimizer._model_variables_moving_average
    np.savez(out, weights=np.concatenate([np.ravel(w) for w in model.get_weights()]),
             ema=np.concatenate([np.ravel(keras.ops.convert_to_numpy(a)) for a in averages]),
             iterations=int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
             epochs_run=len(history.history.get("loss", [])))


def main(jobs):
    model = build()
    with tempfile.TemporaryDirectory() as folder:
        initial = os.path.join(folder, "initial.weights.h5")
        model.save_weights(initial)
        for job in jobs:
            model.load_weights(initial)
            run(model, job)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
