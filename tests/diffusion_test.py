import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_cdm import GaussianDiffusion
from keras_cdm._compile import compile_function
from keras_cdm.testing import REFERENCE_BETAS, Reference, cosine_betas, gradient, to_numpy

RNG = np.random.default_rng(7)
SHAPE = (3, 4, 4, 2)


@pytest.mark.parametrize("schedule,T", sorted(REFERENCE_BETAS))
def test_schedule_and_posterior_buffers_match_float64_derivation(schedule, T):
    d = GaussianDiffusion(T, schedule)
    ref = Reference(REFERENCE_BETAS[(schedule, T)])
    for name, expected in [("betas", ref.betas), ("alphas_cumprod", ref.ac), ("alphas_cumprod_prev", ref.ac_prev),
                           ("posterior_variance", ref.post_var),
                           ("posterior_log_variance_clipped", ref.post_logvar),
                           ("posterior_mean_coef1", ref.coef1), ("posterior_mean_coef2", ref.coef2)]:
        got = getattr(d, name)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14, err_msg=name)


def test_linear_1000_posterior_variance_golden_value():
    assert GaussianDiffusion(1000, "linear").posterior_variance[487] == pytest.approx(0.009792, abs=5e-7)


@pytest.mark.parametrize("counts", ["100", "ddim50", "10,20,30"])
def test_respaced_process_keeps_alphas_cumprod_of_the_kept_steps(counts):
    base = GaussianDiffusion(4000, "cosine", variance="learned_range", loss="hybrid")
    fast = base.respace(counts)
    kept = fast.timestep_map
    assert fast.num_timesteps == len(kept) and kept[0] == 0
    np.testing.assert_allclose(fast.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-10)
    np.testing.assert_allclose(np.cumprod(1 - fast.betas), fast.alphas_cumprod, rtol=1e-10)
    assert fast.get_config() == {**base.get_config(), "section_counts": counts}
    t = np.array([0, len(kept) - 1])
    np.testing.assert_array_equal(to_numpy(fast.model_conditioning(t)), kept[t].astype("float32"))


def test_q_sample_moments():
    d = GaussianDiffusion(1000, "cosine")
    x0 = np.full((20000, 1, 1, 1), 0.7, "float32")
    t = np.full(20000, 300)
    noise = RNG.normal(size=x0.shape).astype("float32")
    x = to_numpy(d.q_sample(x0, t, noise)).ravel()
    ab = Reference(cosine_betas(1000)).ac[300]
    assert x.mean() == pytest.approx(np.sqrt(ab) * 0.7, abs=0.02)
    assert x.var() == pytest.approx(1 - ab, rel=0.03)
    np.testing.assert_allclose(x, np.sqrt(ab) * 0.7 + np.sqrt(1 - ab) * noise.ravel(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance_learned_range_matches_reference(clip):
    d = GaussianDiffusion(4000, "cosine", variance="learned_range", loss="hybrid")
    ref = Reference(cosine_betas(4000))
    t = np.array([0, 1, 1234, 3999])
    x = RNG.normal(size=(4, 4, 4, 3))
    out = np.concatenate([RNG.normal(size=(4, 4, 4, 3)), RNG.uniform(-1, 1, (4, 4, 4, 3))], -1)
    got = d.p_mean_variance(out.astype("float32"), x.astype("float32"), t, clip_denoised=clip)
    for key, expected in zip(("mean", "variance", "log_variance", "pred_xstart"), ref.p_mean_variance(out, x, t, clip)):
        value = to_numpy(got[key])
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max(), err_msg=key)


@pytest.mark.parametrize("t", [[0, 0, 0], [1, 500, 3999], [0, 7, 2000]])
def test_hybrid_loss_terms_match_reference(t):
    d = GaussianDiffusion(4000, "cosine", variance="learned_range", loss="hybrid")
    ref = Reference(cosine_betas(4000))
    t = np.array(t)
    x0 = np.clip(RNG.normal(0, 0.6, SHAPE[:3] + (3,)), -1, 1)
    x0[0, 0, 0] = [-1.0, 1.0, 0.0]  # exercise the edge bins
    noise = RNG.normal(size=x0.shape)
    out = np.concatenate([noise + RNG.normal(0, 0.3, x0.shape), RNG.uniform(-1, 1, x0.shape)], -1)
    got = d.training_losses(out.astype("float32"), x0.astype("float32"), t, noise.astype("float32"))
    expected = ref.losses(out, x0, t, noise)
    assert sorted(got) == ["loss", "mse", "vb"]
    for key in ("mse", "vb", "loss"):
        np.testing.assert_allclose(to_numpy(got[key]), expected[key], rtol=1e-5, err_msg=key)


def test_mse_loss_with_fixed_variances_reports_vb_without_adding_it():
    d = GaussianDiffusion(100, "linear")
    x0, noise = RNG.uniform(-1, 1, SHAPE).astype("float32"), RNG.normal(size=SHAPE).astype("float32")
    got = d.training_losses(noise * 0.5, x0, np.array([0, 10, 99]), noise)
    np.testing.assert_allclose(to_numpy(got["loss"]), to_numpy(got["mse"]))
    np.testing.assert_allclose(to_numpy(got["mse"]), (0.25 * noise**2).reshape(3, -1).mean(-1), rtol=1e-5)
    assert np.all(to_numpy(got["vb"]) > 0)


def test_vb_term_does_not_reach_the_epsilon_half():
    d = GaussianDiffusion(100, "cosine", variance="learned_range", loss="hybrid")
    x0 = RNG.uniform(-1, 1, SHAPE).astype("float32")
    noise = RNG.normal(size=SHAPE).astype("float32")
    t = np.array([0, 30, 99])
    out = np.concatenate([noise + 0.1, RNG.uniform(-1, 1, SHAPE)], -1).astype("float32")
    grad_vb = gradient(lambda o: d.training_losses(o, x0, t, noise)["vb"], out)
    assert np.abs(grad_vb[..., :2]).max() == 0.0
    assert np.abs(grad_vb[..., 2:]).max() > 0.0
    grad_mse = gradient(lambda o: d.training_losses(o, x0, t, noise)["mse"], out)
    assert np.abs(grad_mse[..., :2]).max() > 0.0 and np.abs(grad_mse[..., 2:]).max() == 0.0


def _oracle(diffusion, x0):
    """A network that knows x_0: returns the exact noise of x_t (and v = 0)."""
    ac = diffusion.alphas_cumprod.astype("float32")
    learned = diffusion.variance == "learned_range"

    def denoise(x_t, conditioning):
        t = ops.cast(conditioning, "int32")  # original step indices (no respacing here)
        a = ops.reshape(ops.take(ops.convert_to_tensor(ac), t), (-1, 1, 1, 1))
        eps = (x_t - ops.sqrt(a) * x0) / ops.sqrt(1.0 - a)
        return ops.concatenate([eps, ops.zeros_like(eps)], -1) if learned else eps

    return denoise


@pytest.mark.parametrize(
    "kwargs,sampler",
    [
        ({"variance": "fixed_small"}, "ancestral"),
        ({"variance": "fixed_large"}, "ancestral"),
        ({"variance": "learned_range", "loss": "hybrid"}, "ancestral"),
        ({"variance": "fixed_small"}, "ddim"),
    ],
)
def test_oracle_network_makes_the_sampler_recover_x0(kwargs, sampler):
    d = GaussianDiffusion(40, "cosine", **kwargs)
    x0 = RNG.uniform(-0.9, 0.9, SHAPE).astype("float32")
    x = d.sample_loop(_oracle(d, x0), d.initial_noise(SHAPE, 0), seed=0, sampler=sampler, eta=0.5)
    np.testing.assert_allclose(to_numpy(x), x0, atol=1e-4)


def test_compiled_loop_python_loop_and_split_runs_agree():
    d = GaussianDiffusion(30, "linear")
    x0 = RNG.uniform(-0.5, 0.5, SHAPE).astype("float32")
    noisy = lambda x, c: _oracle(d, x0)(x, c) + 0.3 * x  # noqa: E731  (imperfect model: noise matters)
    x_T = d.initial_noise(SHAPE, 5)
    compiled = compile_function(lambda x, seed: d.sample_loop(noisy, x, seed))
    full = to_numpy(compiled(x_T, 5))
    x = x_T
    for t in range(29, -1, -1):
        x = d.sample_step(noisy, x, t, 5)
    np.testing.assert_allclose(to_numpy(x), full, atol=1e-5)
    z_s = d.sample_loop(noisy, x_T, seed=5, stop_step=12)  # truncated: stops at z_12
    resumed = d.sample_loop(noisy, z_s, seed=5, start_step=12)
    np.testing.assert_allclose(to_numpy(resumed), full, atol=1e-5)
    other_seed = to_numpy(compiled(x_T, 6))
    assert np.abs(other_seed - full).max() > 1e-3


def test_ddim_with_eta_zero_is_deterministic_in_the_seed():
    d = GaussianDiffusion(1000, "cosine").respace("ddim20")
    fn = lambda x, c: 0.5 * x  # noqa: E731
    x_T = d.initial_noise(SHAPE, 1)
    a = to_numpy(d.sample_loop(fn, x_T, seed=1, sampler="ddim"))
    b = to_numpy(d.sample_loop(fn, x_T, seed=2, sampler="ddim"))
    np.testing.assert_array_equal(a, b)


def test_continuous_noise_levels_lie_between_adjacent_steps():
    d = GaussianDiffusion(2000, "linear", conditioning="noise_level")
    t = np.repeat(np.array([0, 1, 999, 1999]), 500)
    levels = to_numpy(d.sample_noise_levels(t, seed=keras.random.SeedGenerator(3)))
    ref = Reference(np.linspace(0.5e-4, 0.01, 2000))
    low, high = np.sqrt(ref.ac[t]), np.sqrt(ref.ac_prev[t])
    assert np.all(levels >= low - 1e-7) and np.all(levels <= high + 1e-7)
    spread = (levels - low) / (high - low)
    assert 0.4 < spread.mean() < 0.6 and spread.std() > 0.25  # uniform within the interval
    x0 = RNG.uniform(-1, 1, SHAPE).astype("float32")
    noise = RNG.normal(size=SHAPE).astype("float32")
    lv = levels[[0, 500, 1000]]
    x = to_numpy(d.q_sample_at_noise_level(x0, lv, noise))
    np.testing.assert_allclose(x, lv[:, None, None, None] * x0 + np.sqrt(1 - lv**2)[:, None, None, None] * noise,
                               rtol=1e-5, atol=1e-6)
    got = d.training_losses(noise, x0, np.array([0, 1, 2]), noise, noise_levels=lv)
    assert sorted(got) == ["loss", "mse"] and np.abs(to_numpy(got["loss"])).max() == 0


def test_noise_level_model_samples_with_any_inference_schedule():
    # Trained on linear-2000 levels; sampled with 4 steps of another schedule.
    inference = GaussianDiffusion(4, "linear", beta_start=1e-3, beta_end=0.5, conditioning="noise_level")
    x0 = RNG.uniform(-0.9, 0.9, SHAPE).astype("float32")
    seen = []

    def denoise(x_t, level):
        seen.append(level)
        level = ops.reshape(level, (-1, 1, 1, 1))
        return (x_t - level * x0) / ops.sqrt(1.0 - level**2)

    x = d_out = inference.sample_loop(denoise, inference.initial_noise(SHAPE, 0), seed=0)
    np.testing.assert_allclose(to_numpy(x), x0, atol=1e-4)
    assert d_out is not None and len(seen) >= 1
    levels = to_numpy(inference.model_conditioning(np.arange(4)))
    np.testing.assert_allclose(levels, np.sqrt(np.cumprod(1 - np.linspace(1e-3, 0.5, 4))), rtol=1e-6)


def test_math_stays_float32_for_bfloat16_model_outputs():
    d = GaussianDiffusion(100, "cosine", variance="learned_range", loss="hybrid")
    out = ops.cast(RNG.normal(size=SHAPE[:3] + (4,)), "bfloat16")
    x = RNG.normal(size=SHAPE).astype("float32")
    result = d.p_mean_variance(out, x, np.array([1, 2, 3]))
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in result.values())
    losses = d.training_losses(out, x, np.array([0, 2, 3]), x)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in losses.values())


def test_config_is_json_round_trippable_and_registered():
    d = GaussianDiffusion(4000, "cosine", section_counts=[10, 5], variance="learned_range", loss="hybrid")
    config = json.loads(json.dumps(d.get_config()))
    clone = GaussianDiffusion.from_config(config)
    np.testing.assert_array_equal(clone.betas, d.betas)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(d))
    assert isinstance(restored, GaussianDiffusion) and restored.num_timesteps == 15
    assert d.respace(100).num_timesteps == 100 and d.respace(100).get_config()["section_counts"] == 100


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"schedule": "sigmoid"}, "`schedule` must be one of ['linear', 'cosine']. Received: schedule='sigmoid'"),
        ({"variance": "learned"}, "`variance` must be one of ['fixed_small', 'fixed_large', 'learned_range']"),
        ({"loss": "l1"}, "`loss` must be one of ['mse', 'hybrid']. Received: loss='l1'"),
        ({"prediction": "v"}, "`prediction` must be one of ['epsilon', 'x_start']. Received: prediction='v'"),
        ({"num_timesteps": 0}, "`num_timesteps` must be a positive integer. Received: num_timesteps=0"),
        ({"section_counts": "7,7"}, "Cannot take 7 steps from a section of 5 steps"),
        ({"variance": "learned_range"}, "Received: loss='mse', variance='learned_range'"),
        ({"loss": "hybrid"}, "Received: loss='hybrid', variance='fixed_small'"),
        ({"conditioning": "noise_level", "variance": "learned_range", "loss": "hybrid"},
         "Continuous noise-level conditioning uses fixed variances"),
    ],
)
def test_bad_configurations_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        GaussianDiffusion(**{"num_timesteps": 10, "schedule": "cosine", **kwargs})
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"start_step": 10}, "`start_step` must be an integer in [0, 9]. Received: start_step=10"),
        ({"start_step": -1}, "Received: start_step=-1"),
        ({"stop_step": 9}, "`stop_step` must be None or an integer in [0, start_step) = [0, 9). Received: stop_step=9"),
        ({"start_step": 3, "stop_step": 5}, "Received: stop_step=5"),
        ({"sampler": "euler"}, "`sampler` must be one of ['ancestral', 'ddim', 'dpm++2m', 'dpm++3m', 'dpm++2m-sde']. "
                                "Received: sampler='euler'"),
    ],
)
def test_sampling_steps_out_of_range_raise(kwargs, message):
    d = GaussianDiffusion(10, "cosine")
    with pytest.raises(ValueError) as info:
        d.sample_loop(lambda x, c: x, np.zeros(SHAPE, "float32"), seed=0, **kwargs)
    assert message in str(info.value)


def test_noise_levels_must_match_the_conditioning():
    d = GaussianDiffusion(10, "cosine")
    x = np.zeros(SHAPE, "float32")
    with pytest.raises(ValueError, match="Pass `noise_levels` exactly when conditioning='noise_level'"):
        d.training_losses(x, x, np.array([1, 2, 3]), x, noise_levels=np.array([0.5, 0.5, 0.5]))
