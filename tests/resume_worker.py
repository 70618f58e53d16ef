"""Trains a tiny stage with BackupAndRestore; optionally SIGKILLs itself mid-run.

python -m tests.resume_worker BACKUP_DIR OUT.npz [KILL_AFTER_EPOCH]
"""

import os
import signal
import sys

import keras
import numpy as np

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion

EPOCHS = 4


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main(backup_dir, out, kill_after=None):
    keras.utils.set_random_seed(0)
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                         attention_resolutions=(), num_classes=4, num_groups=4, image_channels=1, dropout=0.1)
    model = DiffusionModel(unet, GaussianDiffusion(20, "cosine"), random_flip=True, seed=0)
    model.compile(learning_rate=1e-2, ema_momentum=0.9)
    rng = np.random.default_rng(0)
    data = {"images": rng.uniform(-1, 1, (16, 8, 8, 1)).astype("float32"), "labels": np.arange(16) % 4}
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir)]
    if kill_after is not None:
        callbacks.append(KillAfterEpoch(kill_after))
    model.fit(data, epochs=EPOCHS, batch_size=4, shuffle=False, callbacks=callbacks, verbose=0)
    averages = model.optimizer._model_variables_moving_average
    np.savez(out, weights=np.concatenate([np.ravel(w) for w in model.get_weights()]),
             ema=np.concatenate([np.ravel(keras.ops.convert_to_numpy(a)) for a in averages]),
             iterations=int(keras.ops.convert_to_numpy(model.optimizer.iterations)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
