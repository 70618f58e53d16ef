"""The epoch counters of `keras_cdm.data` pipelines, and `set_epoch`, which sets them.

A pipeline draws each pass's shuffle order and flips from (seed, epoch), the epoch read
from its counter when the pass begins. Each pass advances the counter by itself;
`DiffusionModel.fit` sets every counter to the epoch it is about to train, so that the
batches of an epoch do not depend on what iterated the pipeline before: a run resumed in
a new process (`keras_cdm.callbacks.BackupAndRestore`) sees the same batches as one that
never stopped. No TensorFlow import here: the counters are TensorFlow variables made by
`keras_cdm.data`, and there are none unless it was used.
"""

import weakref

_counters = []  # weak references to the counters (tf.Variable) of the live pipelines


def register_epoch_counter(counter):
    """Registers the epoch counter (an int64 `tf.Variable`) of a new pipeline."""
    _counters[:] = [ref for ref in _counters if ref() is not None]
    _counters.append(weakref.ref(counter))


def set_epoch(epoch):
    """Makes the next pass of every `keras_cdm.data` pipeline draw its shuffle order and
    flips for `epoch` (then `epoch + 1`, ...). `DiffusionModel.fit` calls it at the start
    of every epoch; a custom training loop that wants epoch-exact resumes calls it too.

    Args:
        epoch: a non-negative integer.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"`epoch` must be a non-negative integer. Received: epoch={epoch!r}")
    for ref in _counters:
        counter = ref()
        if counter is not None:
            counter.assign(epoch)
