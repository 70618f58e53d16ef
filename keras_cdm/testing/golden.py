"""Golden samples: a few digits of the shipped cdm_mnist32 cascade at fixed sampling
settings, stored per backend (tests/data/) and compared by tests/golden_samples_test.py,
so that a change meant to keep behaviour keeps the images bit for bit.
"""

LABELS, SEED, BATCH_SIZE = [0, 3, 7, 9], 11, 3
# One setting per key, one dict per stage (base, sr16, sr32): both samplers, respacing, DDIM's
# eta, Gaussian augmentation non-truncated and truncated, an inference noise schedule.
SETTINGS = {
    "ancestral": [{"num_steps": "ddim10"}, {"num_steps": 5},
                  {"noise_schedule": {"schedule": "linear", "num_timesteps": 4, "beta_start": 1e-4, "beta_end": 0.9}}],
    "ddim_augmented": [{"num_steps": 20, "sampler": "ddim", "eta": 0.5},
                       {"num_steps": 5, "sampler": "ddim", "augmentation_level": 101}, {"num_steps": 3}],
    "truncated": [{"num_steps": 10}, {"num_steps": 4, "augmentation_level": 112, "truncated": True},
                  {"num_steps": 3}],
}


def golden_samples(stages):
    """{"<setting>/<stage name>": float32 images in [-1, 1]} of the fixed request,
    sampled by a cascade of `stages` under every setting of `SETTINGS`, plus the other
    ways in: super-resolution of given uint8 images from an upsampler, chunked sampling
    (`iter_generate`, examples 3 and 4 in their own chunk), and one stage alone with
    per-example seeds and an early stop."""
    import numpy as np

    from keras_cdm.pipeline import CascadedDiffusionPipeline

    samples = {}
    for name, sampling in SETTINGS.items():
        pipeline = CascadedDiffusionPipeline(stages, sampling)
        _, images = pipeline.generate(labels=LABELS, seed=SEED, batch_size=BATCH_SIZE, return_intermediates=True,
                                      output="float", verbose=False)
        samples.update({f"{name}/{stage}": stage_images for stage, stage_images in images.items()})
    pipeline = CascadedDiffusionPipeline(stages, SETTINGS["ddim_augmented"])
    low = np.random.default_rng(SEED).integers(0, 256, (len(LABELS), 8, 8, 1), dtype=np.uint8)
    samples["start_stage/sr32"] = pipeline.generate(labels=LABELS, seed=SEED, batch_size=BATCH_SIZE,
                                                    start_stage="sr16", low_res_images=low, output="float",
                                                    verbose=False)
    chunks = pipeline.iter_generate(labels=LABELS + [5], seed=SEED, chunk_size=3, batch_size=BATCH_SIZE,
                                    output="float", verbose=False)
    samples["iter_generate/sr32"] = np.concatenate(list(chunks))
    samples["stage/base"] = stages[0].generate(labels=LABELS, seed=[1, 2, 3, 2**31 - 1], num_steps=20,
                                               stop_step=4, verbose=False)
    return samples


def golden_file(folder, backend):
    """Where the golden samples of `backend` are stored under `folder`."""
    from pathlib import Path

    return Path(folder) / f"cdm_mnist32_golden_{backend}.npz"
