"""The exponential moving average of the weights (App. B), with a warm-up.

Keras' optimizer EMA (`use_ema=True`, `ema_momentum=m`) copies the weights at the first
step and averages with momentum m from the second on, so after n steps the first step's
weights still hold m**n of the average: 0.999**2,100 = 12 %, 0.9999**10,000 = 37 %. For a
diffusion model trained from scratch those are near-random weights, and a stage sampled
with such an average denoises badly where precision matters most (low noise levels).

`EMAWarmup` gives step k (0-based) the momentum min(m, (1 + k) / (10 + k)), as
TensorFlow's `ExponentialMovingAverage(num_updates=...)` and other diffusion trainers do:
the weight of step k's weights in the average then decays like 1/k instead of m**k until
the momentum reaches m (step 9 / (1 - m) - 1: 8,999 for m = 0.999). Everything else is
Keras' own EMA: the same average variables, `finalize_variable_values`, checkpoints.
"""

import keras
from keras import ops

from keras_cdm._validation import check_bool


def warmup_momentum(momentum, step):
    """The EMA momentum of (0-based) step `step`: min(momentum, (1 + step) / (10 + step))."""
    step = ops.cast(step, "float32")
    return ops.minimum(ops.cast(momentum, "float32"), (1.0 + step) / (10.0 + step))


class EMAWarmup:
    """Mixin for a Keras optimizer: with `ema_warmup=True` its EMA momentum warms up.

    `ema_momentum` reads as the configured (final) momentum everywhere except inside
    Keras' EMA update, where it is the warmed-up momentum of the current step.
    """

    def __init__(self, *args, ema_warmup=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_warmup = check_bool("ema_warmup", ema_warmup)

    @property
    def ema_momentum(self):
        current = getattr(self, "_current_ema_momentum", None)
        return self._ema_momentum if current is None else current

    @ema_momentum.setter
    def ema_momentum(self, value):
        self._ema_momentum = value

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.ema_warmup:
            return super()._update_model_variables_moving_average(trainable_variables)
        self._current_ema_momentum = warmup_momentum(self._ema_momentum, self.iterations)
        try:
            return super()._update_model_variables_moving_average(trainable_variables)
        finally:
            self._current_ema_momentum = None

    def get_config(self):
        return {**super().get_config(), "ema_warmup": self.ema_warmup}


def _keras_adam():
    """Keras' Adam as Keras itself builds it on this backend: on PyTorch `keras.optimizers.Adam`
    makes its fused multi-tensor variant (`torch._foreach_*`), which a subclass would not get,
    so it is subclassed directly (same steps as Keras' own Adam, bit for bit)."""
    if keras.backend.backend() == "torch":
        from keras.src.backend.torch.optimizers.torch_adam import Adam as TorchAdam

        return TorchAdam
    return keras.optimizers.Adam


@keras.saving.register_keras_serializable(package="keras_cdm")
class Adam(EMAWarmup, _keras_adam()):
    """Keras' `Adam` whose EMA warms up (`ema_warmup=True`, see `EMAWarmup`); what
    `DiffusionModel.compile()` builds by default."""
