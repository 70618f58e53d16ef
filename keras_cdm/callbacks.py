"""Keras callbacks for training cascade stages with `model.fit`.

`SampleGrid` samples the stage being trained every few epochs (with its EMA
weights, like `generate()`) and writes a PNG grid, so a long run can be watched
and judged by eye:

    stage.fit(train, epochs=50, callbacks=[
        SampleGrid("samples/epoch_{epoch:03d}.png", labels=range(10), num_steps=50, every=5)])

`BackupAndRestore` is `keras.callbacks.BackupAndRestore` (same arguments) made safe
against a kill at any instant, exact at any `save_freq`, and keeping the last finite
state when training stops on a NaN (see its docstring and docs/reliability.md):

    stage.fit(train, epochs=50, callbacks=[BackupAndRestore("backup/base")])
"""

import contextlib
import json
import math
import os
import re
import uuid
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_cdm._files import process_alive
from keras_cdm._validation import check_bool, check_positive_int, is_int, shown
from keras_cdm.images import from_uint8, to_uint8
from keras_cdm.sampling import check_settings
from keras_cdm.visualization import save_image_grid

__all__ = ["BackupAndRestore", "SampleGrid"]


class SampleGrid(keras.callbacks.Callback):
    """Writes a grid of samples of the trained `DiffusionModel` every `every` epochs.

    Every grid uses the same `seed`, so successive grids show the same starting
    noise turning into images as training goes on. The samples come from
    `model.generate(...)`: with the optimizer's EMA weights when it has them
    (`use_ema=False` for the raw training weights). Grids are written after
    epochs `every`, `2 * every`, ... and after the last epoch of the `fit` call.

    Args:
        path: where to write the PNG. `{epoch}` in it (1-based, format specs
            allowed: `"grid_{epoch:03d}.png"`) gives one file per epoch;
            without it the same file is overwritten.
        labels: one class label per image (class-conditional stages).
        num_images: how many images (unconditional stages; ignored with `labels`).
        low_res_images: the conditioning of a super-resolution stage, one image
            per sample, at its `low_res_size`: uint8, or floats in [-1, 1].
        show_low_res: for an upsampler, put each low-resolution input (enlarged,
            nearest neighbour) above its sample.
        every: epochs between two grids.
        seed: the sampling seed (the same for every grid).
        columns: images per row (default: about square; all of them in one row
            with `show_low_res`, which needs `columns` to divide the number of images).
        class_names: names written above the tiles instead of label numbers.
        verbose: print the path of each grid written.
        **generate_kwargs: sampling settings (`DiffusionModel.sampling_plan`),
            e.g. `num_steps=25`, `augmentation_level=100`, `noise_schedule={...}`,
            turned into the stage's plan once, when the callback meets its model;
            and `use_ema=False` to sample the training weights.

    Attributes:
        paths: the files written, in order.
    """

    def __init__(self, path, labels=None, num_images=None, low_res_images=None, show_low_res=True, every=1, seed=0,
                 columns=None, class_names=None, verbose=False, **generate_kwargs):
        super().__init__()
        self.path = str(path)
        if Path(self.path.replace("{", "").replace("}", "")).suffix.lower() != ".png":
            raise ValueError(f"`path` must end in .png. Received: path={self.path!r}")
        every = check_positive_int("every", every)
        self.labels = None if labels is None else np.asarray(list(labels) if isinstance(labels, range) else labels)
        if self.labels is not None:
            self.labels = self.labels.reshape(-1)
            count = len(self.labels)
        elif is_int(num_images) and num_images > 0:
            count = int(num_images)
        else:
            raise ValueError("Pass `labels` (class-conditional stage) or a positive `num_images`. "
                             f"Received: labels=None, num_images={num_images!r}")
        self.num_images = count
        self.low_res_images = None if low_res_images is None else from_uint8(low_res_images, name="low_res_images")
        if self.low_res_images is not None and len(self.low_res_images) != count:
            raise ValueError(f"`low_res_images` must hold one image per sample ({count}). "
                             f"Received: {len(self.low_res_images)}")
        self.show_low_res = bool(show_low_res) and self.low_res_images is not None
        columns = None if columns is None else check_positive_int("columns", columns)
        if self.show_low_res and columns is not None and count % columns:
            raise ValueError(f"With `show_low_res`, `columns` must divide the number of images ({count}). "
                             f"Received: columns={columns}")
        self.every, self.seed, self.columns = every, seed, columns
        self.class_names, self.verbose = class_names, verbose
        self.use_ema = generate_kwargs.pop("use_ema", True)
        self.settings = check_settings(generate_kwargs)
        self.plan = None
        self.paths = []

    def set_model(self, model):
        if not callable(getattr(model, "generate", None)) or not hasattr(model, "unet"):
            raise ValueError(f"SampleGrid samples a keras_cdm DiffusionModel. Received: {type(model).__name__}")
        self.plan = model.sampling_plan(**self.settings)  # bad settings fail before training starts
        super().set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        last = (self.params or {}).get("epochs")
        if (epoch + 1) % self.every == 0 or epoch + 1 == last:
            self.write(epoch + 1)

    def write(self, epoch):
        """Samples the model now and writes the grid for `epoch`; returns the path."""
        samples = self.model.generate(
            labels=self.labels, num_images=None if self.labels is not None else self.num_images, seed=self.seed,
            low_res_images=self.low_res_images, plan=self.plan, use_ema=self.use_ema, verbose=False)
        images, labels, columns = to_uint8(samples), self.labels, self.columns
        if self.show_low_res:
            factor = images.shape[1] // self.low_res_images.shape[1]
            low = np.repeat(np.repeat(to_uint8(self.low_res_images), factor, axis=1), factor, axis=2)
            columns = columns or len(images)
            rows = [part for start in range(0, len(images), columns)
                    for part in (low[start:start + columns], images[start:start + columns])]
            images = np.concatenate(rows)
            if labels is not None:
                labels = np.concatenate([labels[start:start + columns] for start in range(0, len(labels), columns)
                                         for _ in range(2)])
        columns = columns or max(1, math.ceil(math.sqrt(len(images))))
        path = Path(self.path.format(epoch=epoch))
        save_image_grid(images, path, labels=labels, columns=columns, class_names=self.class_names)
        self.paths.append(path)
        if self.verbose:
            print(f"SampleGrid: epoch {epoch}: {path}")
        return path


# -- BackupAndRestore -------------------------------------------------------------------------

_METADATA = "training_metadata.json"
_PREVIOUS = _METADATA + ".bkp"
_FORMAT = "keras_cdm.BackupAndRestore/1"
_WEIGHTS = re.compile(r"backup-(?P<pid>\d+)-[0-9a-f]{12}\.weights\.h5")
_TEMPORARY = re.compile(r"\.training_metadata\.json(\.bkp)?\.tmp-(?P<pid>\d+)-[0-9a-f]{8}")
# What keras.callbacks.BackupAndRestore writes: a folder it left is restored (epochs only).
_KERAS_WEIGHTS = {_METADATA: "latest.weights.h5", _PREVIOUS: "latest.weights.h5.bkp"}


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore`, safe against a kill at any instant and exact.

    The same arguments and use as Keras' callback (swap the import): the training state
    (weights, optimizer with its moments and EMA, the seed generators of a
    `DiffusionModel`) is backed up in `backup_dir` at the end of every epoch or every
    `save_freq` batches, and a `fit` started again with the same folder restores it and
    continues where the backup was taken. What it adds to Keras' callback:

    - **Kills.** A backup is written to a new file, flushed to disk (`fsync`), and then
      committed by atomically replacing `training_metadata.json`, which names it; the
      previous backup is deleted only after that. A process killed at any instant (or a
      power cut) leaves the last complete backup, never a truncated one; a half-written
      file is ignored and removed by the next `fit`. Keras' callback rewrites its weights
      file in place and dies on the next start with an h5py error when it was killed
      during the write.
    - **Exact at every `save_freq`.** The backup records the epoch and the number of
      batches done in it; a run resumed from a backup taken mid-epoch (integer
      `save_freq`) skips the batches already trained on, without training on them, so it
      continues with the batch that comes next. Keras' callback replays the interrupted
      epoch from its first batch. The resumed run reaches exactly the weights and EMA of
      an uninterrupted one, provided each epoch yields its batches in the same order in
      every process: `shuffle=False` with arrays, or a `tf.data` pipeline that does not
      reshuffle (`keras_cdm.data` pipelines with `shuffle=False`). An epoch resumed
      mid-way logs the mean of its remaining batches only.
    - **NaN.** A state with a non-finite weight or optimizer variable is never written:
      the backup keeps the last finite state. When training ends with such a state (for
      instance stopped by `keras.callbacks.TerminateOnNaN`), the folder is kept (whatever
      `delete_checkpoint`), the model is put back to that last finite state and a warning
      says so: change what made the loss diverge (the learning rate, the data) and call
      `fit` again with the callback to resume from it.
    - **Damage.** A backup that cannot be restored (a damaged file, a backup of another
      model) raises a `ValueError` naming the file and what to do, never a raw h5py error.
      With `double_checkpoint=True` the previous backup is kept too and used when the
      last one cannot be read.

    A folder written by `keras.callbacks.BackupAndRestore` is restored as Keras would
    (at the start of the epoch it recorded).

    Several processes: on JAX (`keras.distribution.initialize`, one program run by every
    process, the state one set of global arrays) give every process the same
    `backup_dir`, on a file system they all see: process 0 writes the backups, every
    process restores the same one, so a pair killed at any instant resumes from one
    consistent state (as Orbax checkpoints are written). With `tf.distribute` workers,
    use one folder per worker.

    Args:
        backup_dir: the folder of the backup (created when needed), a local path.
        save_freq: `"epoch"`, or a positive integer: back up every `save_freq` batches.
        double_checkpoint: also keep the previous backup, used when the last one cannot
            be read (twice the disk space).
        delete_checkpoint: delete the folder when `fit` ends (not when it ends with a
            non-finite state, see above).
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        if isinstance(backup_dir, os.PathLike):
            backup_dir = os.fspath(backup_dir)
        if not isinstance(backup_dir, str) or not backup_dir:
            raise ValueError(f"`backup_dir` must be a non-empty path. Received: backup_dir={shown(backup_dir)}")
        if "://" in backup_dir:
            raise ValueError("keras_cdm's BackupAndRestore writes to a local folder (it relies on atomic renames). "
                             f"Received: backup_dir={backup_dir!r}")
        if save_freq != "epoch" and not (is_int(save_freq) and save_freq >= 1):
            raise ValueError(f"`save_freq` must be 'epoch' or a positive integer (a number of batches). "
                             f"Received: save_freq={shown(save_freq)}")
        super().__init__(backup_dir, save_freq=save_freq if save_freq == "epoch" else int(save_freq),
                         double_checkpoint=check_bool("double_checkpoint", double_checkpoint),
                         delete_checkpoint=check_bool("delete_checkpoint", delete_checkpoint))
        self._folder = Path(backup_dir)
        self._writer = True  # set when `fit` starts: False in JAX processes other than process 0
        self._start_run()

    def _start_run(self):
        self._epoch = 0  # the epoch being trained
        self._batches = 0  # batches of it done (skipped ones included)
        self._since_save = 0  # batches trained since the last backup
        self._skip_epoch, self._skip_until = None, 0  # resuming mid-epoch: batches to skip
        self._committed = None  # metadata of the backup on disk
        self._previous = None  # and of the one before it (double_checkpoint)
        self._refused = None  # where the first state not written (non-finite) was

    # -- restoring ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        if not model.built:
            raise ValueError(f"To use BackupAndRestore, the model must be built before `fit()`. Model {model.name!r} "
                             "is not built: build it, e.g. by calling it on a batch of data.")
        self._start_run()
        self._writer = _process_index() == 0  # multi-process JAX: process 0 writes, all restore
        current, previous = self._read_metadata(_METADATA), self._read_metadata(_PREVIOUS)
        problems = []
        for metadata in (current, previous):
            if metadata is None:
                continue
            problem = metadata.get("problem") or self._restore(metadata)
            if problem is None:
                self._committed = metadata
                break
            problems.append(problem)
        usable = previous is not None and "problem" not in previous and not previous.get("legacy")
        if self.double_checkpoint and self._committed is current and usable:
            self._previous = previous
        if problems and self._committed is None:
            raise ValueError(
                f"Cannot resume training from the backup in {self._folder}: {' '.join(problems)} It is damaged (for "
                "instance written by keras.callbacks.BackupAndRestore while the process was killed), or it is the "
                "backup of another model (another architecture, optimizer or compile arguments). Delete the folder "
                f"{self._folder} to train from the start (or put back a copy of it).")
        if problems:
            warnings.warn(f"BackupAndRestore: {problems[0]} Resumed from the previous backup "
                          f"({_position(self._committed)}).", stacklevel=2)
        self._remove_stale_files()
        if self._committed is None:
            return
        epoch, batch = self._committed["epoch"], self._committed["batch"]
        model._initial_epoch = epoch
        self._epoch = epoch
        if batch:
            steps = getattr(model, "steps_per_execution", 1) or 1
            if batch % steps:
                raise ValueError(f"The backup in {self._folder} was taken {_position(self._committed)}, which is "
                                 f"not a multiple of `steps_per_execution` ({steps}): resume with the "
                                 "`steps_per_execution` it was written with.")
            self._skip_epoch, self._skip_until = epoch, batch

    def _read_metadata(self, name):
        """The metadata of a backup, None when there is none, or {"problem": ...}."""
        path = self._folder / name
        legacy_weights = self._folder / _KERAS_WEIGHTS[name]
        if not path.exists():
            if name == _METADATA and legacy_weights.is_file():  # Keras writes the weights first
                return {"epoch": 0, "batch": 0, "weights": legacy_weights.name, "legacy": True}
            return None
        try:
            with open(path, "rb") as file:
                metadata = json.loads(file.read(1 << 20).decode("utf-8"))
        except (OSError, ValueError) as error:
            return {"problem": f"{path} cannot be read ({type(error).__name__}: {error})."}
        if not isinstance(metadata, dict) or not is_int(metadata.get("epoch")) or metadata["epoch"] < 0:
            return {"problem": f"{path} does not hold the metadata of a backup (an 'epoch')."}
        if metadata.get("format") != _FORMAT:  # written by keras.callbacks.BackupAndRestore
            if not legacy_weights.is_file():
                return None if name == _PREVIOUS else {"problem": f"{legacy_weights} is missing."}
            if metadata.get("batch"):
                warnings.warn(f"BackupAndRestore: {self._folder} was written by keras.callbacks.BackupAndRestore "
                              "with an integer `save_freq`: it is resumed at the start of an epoch, which is not "
                              "an exact continuation.", stacklevel=3)
            return {"epoch": metadata["epoch"], "batch": 0, "weights": legacy_weights.name, "legacy": True}
        weights, batch, iterations = metadata.get("weights"), metadata.get("batch"), metadata.get("iterations")
        if (not isinstance(weights, str) or not _WEIGHTS.fullmatch(weights) or not is_int(batch) or batch < 0
                or not (iterations is None or is_int(iterations))):
            return {"problem": f"{path} does not hold the metadata of a backup (its 'weights', 'batch' or "
                               "'iterations' are not valid)."}
        return metadata

    def _restore(self, metadata):
        """Loads a backup into the model; None, or what went wrong (a sentence)."""
        model = self.model
        path = self._folder / metadata["weights"]
        if not path.is_file():
            return f"{path} is missing."
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:  # its variables must exist to be loaded
            optimizer.build(model.trainable_variables)
        try:
            model.load_weights(str(path))
        except Exception as error:  # h5py's errors (OSError, KeyError, RuntimeError), Keras' ValueError
            message = " ".join(str(error).split())
            return f"{path} cannot be restored ({type(error).__name__}: {message[:500]})."
        iterations = metadata.get("iterations")
        if iterations is not None and optimizer is not None:
            loaded = int(ops.convert_to_numpy(optimizer.iterations))
            if loaded != iterations:
                return f"{path} holds the state after {loaded} optimizer steps, its metadata says {iterations}."
        if not _finite_state(model):
            return f"{path} holds non-finite weights."
        return None

    # -- skipping the batches a mid-epoch backup had already trained on --------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batches = epoch, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch != self._skip_epoch or batch >= self._skip_until:
            return
        # The batch is taken from the data but not trained on: a one-shot train function.
        # (self._model, not self.model: with JAX, the latter syncs the state at every batch.)
        model = self._model
        original = model.train_function
        count = min(getattr(model, "steps_per_execution", 1) or 1, self._skip_until - batch)

        def skip(*args):  # TensorFlow: (iterator); JAX: (state, iterator); PyTorch: (batches,)
            model.train_function = original
            if keras.backend.backend() == "torch":
                return {}  # PyTorch's trainer drew the batch (a list) before calling
            iterator = args[-1]
            for _ in range(count):
                next(iterator)
            return {} if len(args) == 1 else ({}, args[0])

        model.train_function = skip

    # -- backing up -----------------------------------------------------------------------

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1
        if self._epoch == self._skip_epoch and done <= self._skip_until:
            self._batches = done  # a skipped batch
            return
        self._since_save += done - self._batches
        self._batches = done
        if self.save_freq != "epoch" and self._since_save >= self.save_freq:
            self._save_model(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch == self._skip_epoch and self._batches < self._skip_until:
            warnings.warn(f"BackupAndRestore: the data ran out after {self._batches} batches of epoch {epoch + 1}, "
                          f"before the {self._skip_until} batches its backup had trained on: the data changed, "
                          "the run is not an exact continuation.", stacklevel=2)
        self._skip_epoch = None
        steps = (self.params or {}).get("steps")
        complete = not self._model.stop_training or (steps is not None and self._batches >= steps)
        position = (epoch + 1, 0) if complete else (epoch, self._batches)
        if self.save_freq == "epoch":
            committed = None if self._committed is None else (self._committed["epoch"], self._committed["batch"])
            if self._since_save or committed != position:
                self._save_model(*position)
        elif self._since_save == 0 and self._committed is not None and complete and (
                (self._committed["epoch"], self._committed["batch"]) == (epoch, self._batches)):
            self._commit(dict(self._committed, epoch=epoch + 1, batch=0))  # same state, at the epoch's end
        self._epoch, self._batches = epoch + 1, 0

    def _save_model(self, epoch=None, batch=0):
        if epoch is None:  # Keras' signature
            epoch, batch = self._epoch, self._batches
        model = self.model
        if not _finite_state(model):
            if self._refused is None:
                self._refused = {"epoch": epoch, "batch": batch}
                warnings.warn(f"BackupAndRestore: the training state has non-finite values ({_position(self._refused)}):"
                              f" it is not backed up; the backup in {self._folder} keeps the last finite state.",
                              stacklevel=2)
            return
        name = None
        if self._writer:
            self._folder.mkdir(parents=True, exist_ok=True)
            name = f"backup-{os.getpid()}-{uuid.uuid4().hex[:12]}.weights.h5"
            path = self._folder / name
            with _without_distribution():
                model.save_weights(str(path))  # a new file: killed now, it is an orphan, never a damaged backup
            _fsync(path)
        optimizer = getattr(model, "optimizer", None)
        iterations = None if optimizer is None else int(ops.convert_to_numpy(optimizer.iterations))
        self._commit({"format": _FORMAT, "epoch": int(epoch), "batch": int(batch), "iterations": iterations,
                      "weights": name})
        self._since_save = 0

    def _commit(self, metadata):
        """Makes `metadata` (and the weights file it names) the backup, atomically; with
        `double_checkpoint`, the backup it replaces becomes the previous one first. With
        several JAX processes, process 0 commits and the others then read what it wrote."""
        if not self._writer:
            _sync_processes("keras_cdm.BackupAndRestore.commit")  # process 0 has committed
            self._committed = self._read_metadata(_METADATA)
            self._previous = self._read_metadata(_PREVIOUS) if self.double_checkpoint else None
            _sync_processes("keras_cdm.BackupAndRestore.read")
            if self._committed is None or "problem" in self._committed:
                raise ValueError(f"BackupAndRestore: process {_process_index()} does not see the backup process 0 "
                                 f"wrote in {self._folder}: with several JAX processes `backup_dir` must be a folder "
                                 "that every process sees (a shared file system).")
            return
        previous = self._committed
        if (self.double_checkpoint and previous is not None and not previous.get("legacy")
                and previous["weights"] != metadata["weights"]):
            _write_json(self._folder / _PREVIOUS, previous)
            self._previous = previous
        _write_json(self._folder / _METADATA, metadata)  # the commit point
        self._committed = metadata
        self._remove_stale_files()
        _sync_processes("keras_cdm.BackupAndRestore.commit")
        _sync_processes("keras_cdm.BackupAndRestore.read")  # the others have read it

    def _remove_stale_files(self):
        """Removes the weights files no metadata names, Keras' own files once replaced and
        the temporary files of killed writes (process 0 only, with several JAX processes)."""
        if not self._writer or not self._folder.is_dir():
            return
        keep = set()
        if self._committed is not None:
            keep.add(self._committed["weights"])
            if self._previous is not None:
                keep.add(self._previous["weights"])
            elif not self._committed.get("legacy"):
                _remove(self._folder / _PREVIOUS)
        for path in self._folder.iterdir():
            match = _WEIGHTS.fullmatch(path.name) or _TEMPORARY.fullmatch(path.name)
            legacy = path.name in _KERAS_WEIGHTS.values() and self._committed is not None
            if (match and path.name not in keep and not _alive_elsewhere(int(match["pid"]))) or (
                    legacy and path.name not in keep):
                _remove(path)

    # -- the end ----------------------------------------------------------------------------

    def on_train_end(self, logs=None):
        model = self.model
        model._initial_epoch = None  # Keras leaves it set: a later `fit` would start at that epoch
        self._skip_epoch = None
        if self._refused is None and _finite_state(model):
            if self._writer:
                super().on_train_end(logs)  # deletes the folder with `delete_checkpoint`
            return
        where = "" if self._refused is None else f" (first seen {_position(self._refused)})"
        if self._committed is not None and self._restore(self._committed) is None:
            warnings.warn(
                f"BackupAndRestore: training ended with non-finite weights{where}. The model was put back to the "
                f"last finite state, backed up in {self._folder} ({_position(self._committed)}), and the folder "
                "is kept: change what made the loss diverge (e.g. "
                "the learning rate) and call `fit` again with this callback to resume from it.", stacklevel=2)
        else:
            warnings.warn(f"BackupAndRestore: training ended with non-finite weights{where}, before any finite "
                          "state was backed up.", stacklevel=2)


def _process_index():
    """This process's index in a multi-process JAX run (`keras.distribution.initialize`),
    else 0. Read once `fit` starts: JAX must not be touched before it is initialized."""
    if keras.backend.backend() != "jax":
        return 0  # tf.distribute workers: one backup folder each (see the docstring)
    import jax

    return jax.process_index()


@contextlib.contextmanager
def _without_distribution():
    """Keras' `save_weights` makes variables of its own (a reference optimizer): under a
    multi-process JAX distribution making one is a collective that only the writing
    process would enter. It writes with no distribution set: the arrays (replicated)
    are read as they are."""
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def _sync_processes(name):
    """A barrier across the processes of a multi-process JAX run (nothing otherwise)."""
    if keras.backend.backend() != "jax":
        return
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _position(metadata):
    """Where a backup was taken, in words (epochs 1-based, as Keras logs them)."""
    epoch, batch = metadata["epoch"], metadata["batch"]
    if batch:
        return f"after batch {batch} of epoch {epoch + 1}"
    return f"at the end of epoch {epoch}" if epoch else "before the first epoch"


def _finite_state(model):
    """Whether every float weight and optimizer variable of `model` is finite (one sync)."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    checks = [ops.all(ops.isfinite(v.value)) for v in variables if "float" in str(v.dtype)]
    return not checks or bool(ops.convert_to_numpy(ops.all(ops.stack(checks))))


def _write_json(path, value):
    """Writes a small JSON file atomically: a temporary sibling, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(value, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)
    _fsync(path.parent)


def _fsync(path):
    """Flushes a file (or, on POSIX, a folder's entries) to disk."""
    if path.is_dir() and os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path):
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _alive_elsewhere(pid):
    """Whether another live process has this pid (its temporary files may be in use)."""
    return pid != os.getpid() and process_alive(pid)
