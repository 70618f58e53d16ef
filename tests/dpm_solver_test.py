"""DPM-Solver++ samplers (keras_cdm.solvers) against closed forms.

On Gaussian data x_0 ~ N(MU, STD^2) (independent pixels) the exact denoiser is
E[x_0 | x_t] = MU + alpha STD^2 / (alpha^2 STD^2 + sigma^2) (x_t - alpha MU), and the
probability-flow ODE maps x_t to x_u = alpha_u MU + (std_u / std_t) (x_t - alpha_t MU),
std^2 = alpha^2 STD^2 + sigma^2 (the only increasing affine map between the two marginals).
Expected values come from these closed forms or from the float64 numpy derivations below
(a quadrature of the exact integral over log-SNR), never from the code under test.
"""

import dataclasses

import numpy as np
import pytest
from keras import ops

from keras_cdm import CascadedDiffusionPipeline, GaussianDiffusion, solvers
from keras_cdm.seeding import example_seeds, stateless_normal, step_counter
from keras_cdm.testing import tiny_cascade, to_numpy

RNG = np.random.default_rng(3)
SHAPE = (2, 4, 4, 2)
MU = RNG.uniform(-0.5, 0.5, SHAPE[1:])
STD = RNG.uniform(0.2, 0.6, SHAPE[1:])
LABELS = [0, 2, 1]


def gaussian_denoiser(diffusion, data=(MU, STD), extra_channels=False):
    """The exact epsilon-prediction network for Gaussian `data` (mean, std) under `diffusion`'s
    conditioning (original step indices or noise levels); `extra_channels` appends junk v channels."""
    mean, std = (ops.convert_to_tensor(np.asarray(v, "float32")) for v in data)
    alphas = np.sqrt(diffusion.respace(None).alphas_cumprod).astype("float32")

    def denoise(x_t, conditioning):
        if diffusion.conditioning == "noise_level":
            alpha = ops.reshape(conditioning, (-1, 1, 1, 1))
        else:
            alpha = ops.reshape(ops.take(ops.convert_to_tensor(alphas), ops.cast(conditioning, "int32")), (-1, 1, 1, 1))
        variance = 1.0 - alpha * alpha
        x_start = mean + alpha * std**2 / (alpha * alpha * std**2 + variance) * (x_t - alpha * mean)
        eps = (x_t - alpha * x_start) / ops.sqrt(variance)
        return ops.concatenate([eps, ops.ones_like(eps) * 0.7], -1) if extra_channels else eps

    return denoise


def ode_flow(x, ac_from, ac_to):
    """The probability-flow ODE's exact map for Gaussian data, in float64."""
    std_from, std_to = np.sqrt(ac_from * STD**2 + 1 - ac_from), np.sqrt(ac_to * STD**2 + 1 - ac_to)
    return np.sqrt(ac_to) * MU + std_to / std_from * (x - np.sqrt(ac_from) * MU)


def ode_error(diffusion, sampler, seed=0):
    """Max error at the first step of the process (stop_step=0), from pure noise, against `ode_flow`."""
    x_T = to_numpy(diffusion.initial_noise(SHAPE, seed)).astype(np.float64)
    x = diffusion.sample_loop(gaussian_denoiser(diffusion), x_T, seed=seed, stop_step=0, sampler=sampler,
                              clip_denoised=False)
    ac = diffusion.alphas_cumprod
    return np.abs(to_numpy(x) - ode_flow(x_T, ac[-1], ac[0])).max()


# Convergence orders ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,num_steps,order,conditioning", [
    ("ddim", "logsnr", 1, "timestep"),
    ("dpm++2m", "logsnr", 2, "timestep"),
    ("dpm++2m", "karras", 2, "noise_level"),
    ("dpm++3m", "karras", 3, "timestep"),
])
def test_error_shrinks_at_the_theoretical_order(sampler, num_steps, order, conditioning):
    # A fine 4000-step process: its kept steps are (nearly) the ideal spacing, so the grid refines evenly.
    variance = "fixed_large" if conditioning == "noise_level" else "fixed_small"
    base = GaussianDiffusion(4000, "linear", variance=variance, conditioning=conditioning)
    counts = {1: (24, 48, 96), 2: (24, 48, 96, 192), 3: (48, 96, 192)}[order]
    errors = [ode_error(base.respace(f"{num_steps}{n}"), sampler) for n in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    print(f"{sampler} {num_steps}N {conditioning}: errors {np.round(errors, 7).tolist()}, fitted order {slope:.2f}")
    assert order - 0.25 < slope < order + 0.5, (slope, errors)  # a little above the order before it settles
    assert errors[-1] < (5e-2, 1e-3, 1e-4)[order - 1]  # converges to the closed form, not just at a rate


def test_higher_orders_are_more_accurate_at_equal_cost():
    base = GaussianDiffusion(4000, "linear").respace("logsnr48")
    errors = [ode_error(base, sampler) for sampler in ("ddim", "dpm++2m", "dpm++3m")]
    assert errors[0] > 10 * errors[1] > 10 * 5 * errors[2], errors


# One update against a float64 derivation -----------------------------------------------------


def _reference_step(diffusion, t, x_t, predictions, sampler, order, noise):
    """x at step t-1 from step t, in float64: (sigma_u/sigma_t) x_t + sigma_u * integral of
    e^lambda P(lambda) over [lambda_t, lambda_u] (Gauss-Legendre), P the polynomial through the
    last `order` data predictions (3m), or their linear extrapolation to the midpoint, held
    constant (2m); SDE-DPM-Solver++(2M) as written in Lu et al. 2022."""
    ac = diffusion.alphas_cumprod
    if t == 0:  # to sigma = 0: the data prediction
        return predictions[0]
    lam = 0.5 * np.log(ac / (1 - ac))
    alpha_u, sigma_u, sigma_t = np.sqrt(ac[t - 1]), np.sqrt(1 - ac[t - 1]), np.sqrt(1 - ac[t])
    h = lam[t - 1] - lam[t]
    if sampler == "dpm++3m":
        nodes = lam[t:t + order]
        points, weights = np.polynomial.legendre.leggauss(16)
        lams = lam[t] + (points + 1) * h / 2
        basis = [np.prod([(lams - m) / (n - m) for m in nodes if m != n], axis=0) for n in nodes]
        integral = sum(np.sum(weights * np.exp(lams - lam[t - 1]) * b) * h / 2 * p for b, p in zip(basis, predictions))
        return sigma_u / sigma_t * x_t + alpha_u * integral
    midpoint = predictions[0]
    if order == 2:
        midpoint = predictions[0] + (h / 2) * (predictions[0] - predictions[1]) / (lam[t] - lam[t + 1])
    if sampler == "dpm++2m-sde":
        return (sigma_u / sigma_t * np.exp(-h) * x_t + alpha_u * (1 - np.exp(-2 * h)) * midpoint
                + sigma_u * np.sqrt(1 - np.exp(-2 * h)) * noise)
    return sigma_u / sigma_t * x_t + alpha_u * (1 - np.exp(-h)) * midpoint


@pytest.mark.parametrize("sampler", sorted(solvers.SOLVERS))
def test_one_step_matches_a_float64_derivation(sampler):
    # An x_0-predicting network, so that the data predictions are exactly the given ones.
    diffusion = GaussianDiffusion(1000, "cosine", prediction="x_start").respace("logsnr12")
    max_order, _ = solvers.SOLVERS[sampler]
    rng = np.random.default_rng(1)
    for t in (11, 9, 5, 2, 1, 0):
        for taken in range(min(max_order, 12 - t)):
            x_t = rng.normal(size=SHAPE).astype("float32")
            predictions = rng.uniform(-1, 1, (max_order,) + SHAPE).astype("float32")
            state = (x_t, tuple(predictions[1:]), ops.convert_to_tensor(taken, "int32"))
            x, history, count = diffusion.sample_step(lambda x, c, p=predictions[0]: p, state, t, seed=4,
                                                      sampler=sampler, clip_denoised=False)
            order = min(taken + 1, max_order, t + 1)
            noise = to_numpy(stateless_normal(SHAPE, 4, step_counter(t)))
            expected = _reference_step(diffusion, t, x_t.astype(np.float64), predictions.astype(np.float64), sampler,
                                       order, noise)
            np.testing.assert_allclose(to_numpy(x), expected, rtol=1e-5, atol=2e-6, err_msg=f"t={t} order={order}")
            assert int(to_numpy(count)) == taken + 1 and len(history) == max_order - 1
            np.testing.assert_array_equal(to_numpy(history[0]), predictions[0])  # the predictions move down


# Where theory says the solvers coincide --------------------------------------------------------


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_the_first_order_step_is_ddim(variance):
    loss = "hybrid" if variance == "learned_range" else "mse"
    diffusion = GaussianDiffusion(1000, "cosine", variance=variance, loss=loss).respace("karras10")
    denoise = gaussian_denoiser(diffusion, extra_channels=variance == "learned_range")
    x = np.random.default_rng(2).normal(size=SHAPE).astype("float32") * 2
    for t in (9, 4, 1, 0):
        for clip in (True, False):
            ddim = diffusion.sample_step(denoise, x, t, seed=1, sampler="ddim", clip_denoised=clip)
            state = solvers.initial_state(x, "dpm++2m")  # no history: a first-order step
            first = diffusion.sample_step(denoise, state, t, seed=1, sampler="dpm++2m", clip_denoised=clip)[0]
            # DDIM recomputes epsilon from the x_0 prediction: at high noise that costs float32 digits.
            np.testing.assert_allclose(to_numpy(first), to_numpy(ddim), rtol=1e-5, atol=5e-5)


def test_the_first_order_sde_step_is_the_ancestral_step():
    # SDE-DPM-Solver++(1) is DDPM's ancestral step with the posterior variance: same mean, same noise.
    diffusion = GaussianDiffusion(1000, "linear", variance="fixed_small").respace("logsnr10")
    denoise = gaussian_denoiser(diffusion)
    x = np.random.default_rng(5).normal(size=SHAPE).astype("float32")
    seeds = np.array([3, 8], "int32")
    for t in (9, 3, 1, 0):
        ancestral = diffusion.sample_step(denoise, x, t, seed=seeds, sampler="ancestral")
        state = solvers.initial_state(x, "dpm++2m-sde")
        sde = diffusion.sample_step(denoise, state, t, seed=seeds, sampler="dpm++2m-sde")[0]
        np.testing.assert_allclose(to_numpy(sde), to_numpy(ancestral), rtol=1e-5, atol=2e-6)


def test_with_a_constant_data_prediction_every_solver_is_ddim():
    # Point-mass data x_0 = 1.5: every difference of predictions vanishes, so the multistep terms do
    # too; with clip_denoised the prediction (the "++" data prediction) is clipped to 1.
    diffusion = GaussianDiffusion(500, "cosine").respace("logsnr8")
    denoise = gaussian_denoiser(diffusion, data=(np.full(SHAPE[1:], 1.5), np.full(SHAPE[1:], 1e-6)))
    x_T = diffusion.initial_noise(SHAPE, 0)
    z_s = {sampler: to_numpy(diffusion.sample_loop(denoise, x_T, seed=0, sampler=sampler, stop_step=2))
           for sampler in ("ddim", "dpm++2m", "dpm++3m")}
    np.testing.assert_allclose(z_s["dpm++2m"], z_s["ddim"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_s["dpm++3m"], z_s["ddim"], rtol=1e-5, atol=1e-5)
    for clip, expected in [(True, 1.0), (False, 1.5)]:
        x = diffusion.sample_loop(denoise, x_T, seed=0, sampler="dpm++2m", clip_denoised=clip)
        np.testing.assert_allclose(to_numpy(x), expected, atol=1e-5)


def test_learned_variance_channels_are_ignored():
    learned = GaussianDiffusion(1000, "cosine", variance="learned_range", loss="hybrid").respace("logsnr6")
    fixed = GaussianDiffusion(1000, "cosine").respace("logsnr6")
    x_T = learned.initial_noise(SHAPE, 3)
    for sampler in ("dpm++3m", "dpm++2m-sde"):
        with_v = learned.sample_loop(gaussian_denoiser(learned, extra_channels=True), x_T, seed=3, sampler=sampler)
        without = fixed.sample_loop(gaussian_denoiser(fixed), x_T, seed=3, sampler=sampler)
        np.testing.assert_array_equal(to_numpy(with_v), to_numpy(without))


# Composition: chunks, truncation, restarts ---------------------------------------------------------


@pytest.mark.parametrize("sampler", ["dpm++3m", "dpm++2m-sde"])
def test_chunks_and_early_stops_are_the_same_chain(sampler):
    diffusion = GaussianDiffusion(1000, "linear").respace("logsnr30")
    denoise = gaussian_denoiser(diffusion)
    x_T = diffusion.initial_noise(SHAPE, 7)
    full = to_numpy(diffusion.sample_loop(denoise, x_T, seed=7, sampler=sampler))
    # Chunks carry the predictions: two runs of a chain are the chain.
    state = diffusion.run_steps(denoise, solvers.initial_state(x_T, sampler), 7, 29, 17, sampler)
    z_12 = to_numpy(solvers.state_sample(state))
    np.testing.assert_allclose(to_numpy(solvers.state_sample(diffusion.run_steps(denoise, state, 7, 12, 13, sampler))),
                               full, atol=1e-5)
    # Stopping at z_s (truncated augmentation) returns the chain's sample at s.
    np.testing.assert_allclose(to_numpy(diffusion.sample_loop(denoise, x_T, seed=7, sampler=sampler, stop_step=12)),
                               z_12, atol=1e-6)


def test_restarting_from_a_re_noised_sample_solves_the_ode_from_there():
    # Section 4.2: noise a sample to step s with the forward process and restart the reverse
    # process there; the run has no earlier predictions, so it starts with first-order steps.
    diffusion = GaussianDiffusion(1000, "linear").respace("logsnr30")
    rng, s = np.random.default_rng(11), 20
    x_0, noise = rng.uniform(-1, 1, SHAPE).astype("float32"), rng.normal(size=SHAPE).astype("float32")
    noisy = to_numpy(diffusion.q_sample(x_0, np.full(SHAPE[0], s), noise))
    to_first = diffusion.sample_loop(gaussian_denoiser(diffusion), noisy, seed=9, start_step=s, stop_step=0,
                                     sampler="dpm++3m", clip_denoised=False)
    ac = diffusion.alphas_cumprod
    np.testing.assert_allclose(to_numpy(to_first), ode_flow(noisy.astype(np.float64), ac[s], ac[0]), atol=2e-3)


@pytest.fixture(scope="module")
def cascade():
    cascade = tiny_cascade()
    cascade.set_sampling("base", sampler="dpm++2m", num_steps="logsnr8")  # visits step 2: sr16 truncates at s=3
    cascade.set_sampling("sr16", sampler="dpm++3m", num_steps="karras5")
    cascade.set_sampling("sr32", sampler="dpm++2m-sde", num_steps="logsnr4")
    return cascade


@pytest.fixture(scope="module")
def sampled(cascade):
    return cascade.generate(labels=LABELS, seed=5, batch_size=3, return_intermediates=True, output="float")


def test_a_seed_gives_the_same_images_whatever_the_batch(cascade, sampled):
    images, intermediates = sampled
    np.testing.assert_array_equal(cascade.generate(labels=LABELS, seed=5, batch_size=3, output="float"), images)
    assert np.abs(cascade.generate(labels=LABELS, seed=6, batch_size=3, output="float") - images).max() > 1e-2
    # The stochastic stage alone, one image at a time, with the cascade's per-example seeds of stage 2.
    seeds = example_seeds(5, range(3), stream=2)
    for i in range(3):
        alone = cascade.stages[2].generate(labels=LABELS[i:i + 1], seed=seeds[i:i + 1], plan=cascade.plans[2],
                                           low_res_images=intermediates["sr16"][i:i + 1])
        np.testing.assert_allclose(alone[0], images[i], atol=2e-5)


def test_truncation_stops_a_solver_stage_at_z_s(cascade, sampled):
    assert cascade.sampling[1]["truncated"] and cascade.sampling[1]["augmentation_level"] == 3
    stop = int(np.flatnonzero(cascade.plans[0].process.timestep_map == 2)[0])  # z_3 is after original step 2
    assert cascade.truncation_step(0) == stop == 1
    z_s = cascade.stages[0].generate(labels=LABELS, seed=example_seeds(5, range(3), stream=0), stop_step=stop,
                                     sampler="dpm++2m", num_steps="logsnr8")
    np.testing.assert_array_equal(sampled[1]["base"], z_s)
    # A progress bar runs the chain in chunks (here one compiled call per step): the same chain.
    chunked = cascade.stages[0].generate(labels=LABELS, seed=5, plan=cascade.plans[0], verbose=True)
    np.testing.assert_allclose(chunked, z_s, atol=1e-6)
    with pytest.raises(ValueError, match="needs stage 'base' to visit step s"):
        cascade.set_sampling("base", num_steps="logsnr6")  # keeps steps 0, 3, 6, ...: not 2


def test_a_continuous_noise_stage_samples_any_inference_schedule(cascade):
    sr32 = cascade.stages[2]
    low = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)).astype("float32")
    plan = sr32.sampling_plan(sampler="dpm++2m", num_steps="karras5",
                              noise_schedule={"schedule": "linear", "num_timesteps": 200})
    assert plan.process.num_timesteps == 5 and plan.process.timestep_map[-1] == 199
    images = sr32.generate(labels=[0, 1], low_res_images=low, seed=1, plan=plan)
    assert images.shape == (2, 32, 32, 1) and np.isfinite(images).all()
    np.testing.assert_array_equal(sr32.generate(labels=[0, 1], low_res_images=low, seed=1, plan=plan), images)


def test_settings_survive_a_preset_round_trip(cascade, sampled, tmp_path):
    loaded = CascadedDiffusionPipeline.from_preset(str(cascade.save_to_preset(tmp_path / "solvers")))
    assert [s["sampler"] for s in loaded.sampling] == ["dpm++2m", "dpm++3m", "dpm++2m-sde"]
    assert [s["num_steps"] for s in loaded.sampling] == ["logsnr8", "karras5", "logsnr4"]
    np.testing.assert_array_equal(loaded.generate(labels=LABELS, seed=5, batch_size=3, output="float"), sampled[0])


@pytest.mark.parametrize("settings,message", [
    ({"sampler": "dpm++4m"}, "`sampler` must be one of ['ancestral', 'ddim', 'dpm++2m', 'dpm++3m', 'dpm++2m-sde']. "
                             "Received: sampler='dpm++4m'"),
    ({"num_steps": "logsnr0"}, '`section_counts` "logsnrN" takes N in [1, 10] (the steps of the process). '
                               "Received: section_counts='logsnr0'"),
    ({"num_steps": "karras11"}, "Received: section_counts='karras11'"),
    ({"num_steps": "karras-3"}, "Received: section_counts='karras-3'"),
])
def test_bad_settings_are_refused(cascade, settings, message):
    with pytest.raises(ValueError) as info:
        cascade.stages[0].sampling_plan(**settings)
    assert message in str(info.value)


def test_a_plan_keeps_the_solver_and_its_spacing(cascade):
    plan = cascade.stages[0].sampling_plan(sampler="dpm++3m", num_steps="karras4")
    assert plan.settings["sampler"] == "dpm++3m" and plan.num_network_evaluations == 4
    assert dataclasses.replace(plan, num_steps="logsnr7").process.num_timesteps == 7
