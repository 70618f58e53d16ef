"""Classifier-free guidance (Ho & Salimans 2022) for class-conditional stages.

Training: `DiffusionModel(label_dropout=p)` replaces each label, with probability p,
by the "no class" label `num_classes`, whose embedding a U-Net built with
`null_label=True` learns; the one network is then both the conditional model
eps(x_t, c) and the unconditional one eps(x_t, null).

Sampling: the `guidance_scale` w of a stage's sampling settings extrapolates from the
unconditional prediction towards the conditional one,
`eps = eps(x_t, null) + w * (eps(x_t, c) - eps(x_t, null))`: w = 1 is the plain
conditional model (the paper's sampling, the default, without a second evaluation),
w = 0 the unconditional one, w > 1 trades diversity for fidelity to the class. The two
evaluations are one network call on a doubled batch. With learned variances only the
epsilon channels are guided; the variance channels are the conditional model's. Every
other input (the step, the low-resolution image, the augmentation level) conditions
both halves alike.
"""

import keras
from keras import ops

from keras_cdm._validation import check_finite

MAX_GUIDANCE_SCALE = 100.0


def check_guidance_scale(scale, guidable, stage_name):
    """A stage's guidance scale: a finite number in [0, 100]; other than 1 only for a
    stage whose U-Net has the null label (trained with label dropout)."""
    scale = float(check_finite("guidance_scale", scale, 0.0, MAX_GUIDANCE_SCALE))
    if scale != 1.0 and not guidable:
        raise ValueError(
            f"Stage {stage_name!r}: `guidance_scale` needs a class-conditional U-Net with a 'no class' label, "
            f"trained for classifier-free guidance (`DiffusionUNet(null_label=True)`, "
            f"`DiffusionModel(label_dropout=0.1)`); this stage has none, so only 1 (no guidance) applies. "
            f"Received: guidance_scale={scale!r}")
    return scale


def drop_labels(labels, rate, null_label, seed_generator):
    """`labels` with each replaced by `null_label` with probability `rate`, drawn
    from `seed_generator` (one uniform number per label)."""
    drop = keras.random.uniform(ops.shape(labels), seed=seed_generator) < rate
    return ops.where(drop, ops.full_like(labels, null_label), labels)


def guided_output(apply, inputs, scale, null_label, image_channels):
    """The network output with classifier-free guidance at `scale`.

    `apply(inputs)` runs the U-Net on a dict of inputs whose "labels" are the classes;
    it is called once, on the batch doubled (the classes, then the null label). Returns
    the guided epsilon, followed by the conditional variance channels when the output
    has them.
    """
    labels = inputs["labels"]
    batch = ops.shape(labels)[0]
    doubled = {key: ops.concatenate([value, value], axis=0) for key, value in inputs.items()}
    doubled["labels"] = ops.concatenate([labels, ops.full_like(labels, null_label)], axis=0)
    output = ops.cast(apply(doubled), "float32")
    conditional, unconditional = output[:batch], output[batch:]
    eps_c, eps_u = conditional[..., :image_channels], unconditional[..., :image_channels]
    guided = eps_u + scale * (eps_c - eps_u)
    if output.shape[-1] == image_channels:
        return guided
    return ops.concatenate([guided, conditional[..., image_channels:]], axis=-1)
