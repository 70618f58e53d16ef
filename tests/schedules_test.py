import math

import numpy as np
import pytest

from keras_cdm.schedules import get_beta_schedule, respaced_steps, space_timesteps


def cosine_alpha_bar(t, T, s=0.008):
    return np.cos(((t / T) + s) / (1 + s) * np.pi / 2) ** 2


@pytest.mark.parametrize("T", [1000, 2000, 4000, 250])
def test_linear_schedule_is_ddpm_scaled_by_1000_over_T(T):
    betas = get_beta_schedule("linear", T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    scale = 1000.0 / T
    assert betas[0] == pytest.approx(1e-4 * scale, abs=1e-15)
    assert betas[-1] == pytest.approx(0.02 * scale, abs=1e-15)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) * scale / (T - 1), rtol=1e-9)


@pytest.mark.parametrize("T", [1000, 4000])
def test_cosine_schedule_follows_alpha_bar_closed_form(T):
    betas = get_beta_schedule("cosine", T)
    alphas_cumprod = np.cumprod(1.0 - betas)
    t = np.arange(1, T + 1)
    expected = cosine_alpha_bar(t, T) / cosine_alpha_bar(0, T)
    unclipped = betas < 0.999
    # Up to the first clipped beta the cumulative product is the closed form.
    first_clipped = np.argmin(unclipped) if not unclipped.all() else T
    np.testing.assert_allclose(alphas_cumprod[:first_clipped], expected[:first_clipped], rtol=1e-10)
    assert betas[-1] == 0.999 and betas.max() <= 0.999


def test_linear_schedule_custom_ends_and_errors():
    np.testing.assert_allclose(get_beta_schedule("linear", 5, 1e-4, 0.1), np.linspace(1e-4, 0.1, 5))
    with pytest.raises(ValueError, match="Received: beta_start=0.2, beta_end=0.1"):
        get_beta_schedule("linear", 5, 0.2, 0.1)
    with pytest.raises(ValueError, match="T must exceed 20; received num_timesteps=10"):
        get_beta_schedule("linear", 10)
    with pytest.raises(ValueError, match="only apply to the linear schedule"):
        get_beta_schedule("cosine", 5, beta_end=0.1)


@pytest.mark.parametrize(
    "args,message",
    [
        (("quadratic", 10), "`schedule` must be one of ['linear', 'cosine']. Received: schedule='quadratic'"),
        (("linear", 0), "`num_timesteps` must be a positive integer. Received: num_timesteps=0"),
        (("cosine", 2.5), "`num_timesteps` must be a positive integer. Received: num_timesteps=2.5"),
    ],
)
def test_schedule_errors(args, message):
    with pytest.raises(ValueError) as info:
        get_beta_schedule(*args)
    assert message in str(info.value)


def test_ddim_respacing_uses_the_integer_stride_with_exact_count():
    assert space_timesteps(4000, "ddim50") == set(range(0, 4000, 80))
    assert space_timesteps(1000, "ddim3") == {0, 334, 668}  # stride 334: ceil(1000 / 334) = 3
    assert space_timesteps(100, "ddim100") == set(range(100))


def test_section_respacing_by_hand():
    # 10 steps, one section of 4: stride 9/3 = 3.
    assert space_timesteps(10, "4") == {0, 3, 6, 9}
    # 6 steps, 5 kept: stride 1.25, positions 0, 1.25, 2.5, 3.75, 5 -> Python rounds 2.5 to 2.
    assert space_timesteps(6, "5") == {0, 1, 2, 4, 5}
    # 300 steps in three sections of 100: 1, 2 and 3 steps.
    assert space_timesteps(300, "1,2,3") == {0, 100, 199, 200, 250, 299}
    # 10 steps in 3 sections: sizes 4, 3, 3 (the remainder goes first).
    assert space_timesteps(10, [2, 1, 3]) == {0, 3, 4, 7, 8, 9}


def test_respacing_4000_to_100_spans_the_process():
    kept = sorted(space_timesteps(4000, "100"))
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 3999
    stride = 3999 / 99
    assert all(abs(k - i * stride) <= 0.5 for i, k in enumerate(kept))
    assert sorted(space_timesteps(4000, 100)) == kept


@pytest.mark.parametrize(
    "counts,message",
    [
        ("11", "Cannot take 11 steps from a section of 10 steps"),
        ("5,5,5", "Cannot take 5 steps from a section of 4 steps (10 steps in 3 sections)"),
        ("ddim7", "Cannot take exactly 7 of 10 steps with an integer stride"),
        ("ddimx", 'must be "ddimN", "N", "N1,N2,..." or a list of positive integers'),
        ("0", "Received: section_counts='0'"),
        ("a,b", "Received: section_counts='a,b'"),
        (None, "Received: section_counts=None"),
    ],
)
def test_respacing_errors(counts, message):
    with pytest.raises(ValueError) as info:
        space_timesteps(10, counts)
    assert message in str(info.value)


def test_cosine_value_at_midpoint_golden():
    # alpha_bar(T/2) = cos^2((0.5 + 0.008) / 1.008 * pi / 2) / cos^2(0.008 / 1.008 * pi / 2)
    betas = get_beta_schedule("cosine", 1000)
    expected = math.cos(0.508 / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert np.cumprod(1 - betas)[499] == pytest.approx(expected, rel=1e-12)


# Spacing by noise level ("logsnrN", "karrasN") ------------------------------------------------------


def _nearest_log_snr_steps(ac, targets):
    log_snr = np.log(ac / (1 - ac))
    return [int(np.argmin(np.abs(log_snr - target))) for target in targets]


def test_logsnr_and_karras_steps_are_the_steps_nearest_their_targets():
    ac = np.cumprod(1 - np.linspace(0.25e-4, 0.005, 4000))  # linear, 4000 steps (derived here)
    log_snr = np.log(ac / (1 - ac))
    logsnr_targets = np.linspace(log_snr[-1], log_snr[0], 20)
    sigma_ramp = np.linspace(np.exp(-log_snr[-1] / 14), np.exp(-log_snr[0] / 14), 20)  # sigma^(1/7), rho = 7
    for counts, targets in [("logsnr20", logsnr_targets), ("karras20", -14 * np.log(sigma_ramp))]:
        kept = sorted(respaced_steps(ac, counts))
        assert len(kept) == 20 and kept[0] == 0 and kept[-1] == 3999
        assert kept == sorted(_nearest_log_snr_steps(ac, targets)), counts
    karras, logsnr = sorted(respaced_steps(ac, "karras20")), sorted(respaced_steps(ac, "logsnr20"))
    assert np.mean(karras) > np.mean(logsnr)  # rho = 7 spends more steps at high noise than even log-SNR


def test_targets_that_round_to_one_step_move_to_free_steps():
    ac = np.cumprod(1 - get_beta_schedule("cosine", 10))
    assert len(set(_nearest_log_snr_steps(ac, np.linspace(np.log(ac[-1] / (1 - ac[-1])), 0, 8)))) < 8
    for counts in ("logsnr8", "karras8", "karras10"):
        kept = respaced_steps(ac, counts)
        assert len(kept) == int(counts[6:]) and {0, 9} <= kept and kept <= set(range(10))


def test_other_section_counts_respace_as_before():
    ac = np.cumprod(1 - get_beta_schedule("linear", 1000))
    for counts in ("ddim50", "100", "10,15,20", [3, 4], 7):
        assert respaced_steps(ac, counts) == space_timesteps(1000, counts)


@pytest.mark.parametrize("counts", ["logsnr0", "karras11", "logsnr-2", "karrasx", "logsnr"])
def test_noise_level_spacing_errors(counts):
    with pytest.raises(ValueError, match=r'"(logsnr|karras)N" takes N in \[1, 10\] \(the steps of the process\)'):
        respaced_steps(np.cumprod(1 - get_beta_schedule("cosine", 10)), counts)
