"""Noise schedules and respacing (paper section 2.1, Appendix B; Improved DDPM names).

Pure numpy, float64. `t` indexes steps 0..T-1 (0 = the first, least noisy step).
"""

import math

import numpy as np

from keras_cdm._validation import check_choice, check_positive_int, is_int

SCHEDULES = ("linear", "cosine")
CONDITIONINGS = ("timestep", "noise_level")
"""What a network is conditioned on for step t: the step index itself, or the
continuous noise level sqrt(alpha_bar_t) (section 4.4)."""
NOISE_SPACINGS = ("logsnr", "karras")
"""Prefixes of section counts that space the kept steps by noise level, e.g. "logsnr20"."""
KARRAS_RHO = 7.0


def get_beta_schedule(name, num_timesteps, beta_start=None, beta_end=None):
    """Betas of a named schedule, a float64 array of length `num_timesteps`.

    - "linear": DDPM's 1e-4 -> 0.02 over 1000 steps, scaled by `1000 / T` as in
      Improved DDPM (so any T covers the same total noise). `beta_start` and
      `beta_end` override the two ends (inference schedules of section 4.4).
    - "cosine": Improved DDPM's `alpha_bar(t) = cos^2((t/T + 0.008) / 1.008 * pi/2)`,
      each beta clipped to 0.999.
    """
    check_choice("schedule", name, SCHEDULES)
    num_timesteps = check_positive_int("num_timesteps", num_timesteps)
    if name == "linear":
        scale = 1000.0 / num_timesteps
        start = scale * 0.0001 if beta_start is None else float(beta_start)
        end = scale * 0.02 if beta_end is None else float(beta_end)
        if not 0.0 < start <= end < 1.0:
            hint = "" if beta_end is not None else (
                f" (the default ends scale with 1000/T: T must exceed 20; received num_timesteps={num_timesteps})"
            )
            raise ValueError(
                f"Linear schedule ends must satisfy 0 < beta_start <= beta_end < 1{hint}. "
                f"Received: beta_start={start}, beta_end={end}"
            )
        return np.linspace(start, end, num_timesteps, dtype=np.float64)
    if beta_start is not None or beta_end is not None:
        raise ValueError(
            f"`beta_start` / `beta_end` only apply to the linear schedule. "
            f"Received: schedule={name!r}, beta_start={beta_start}, beta_end={beta_end}"
        )
    return betas_for_alpha_bar(
        num_timesteps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    )


def betas_for_alpha_bar(num_timesteps, alpha_bar, max_beta=0.999):
    """Betas that discretise a continuous `alpha_bar(s)`, s in [0, 1]."""
    return np.array(
        [
            min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
            for i in range(num_timesteps)
        ],
        dtype=np.float64,
    )


def space_timesteps(num_timesteps, section_counts):
    """The steps of a `num_timesteps` process kept by a respaced process.

    `section_counts` is "ddimN" (an integer stride giving exactly N steps, as in
    DDIM), or comma-separated counts (string or list) that split the process
    into equal sections and take evenly spaced steps in each, e.g. "10,15,20"
    takes 10 steps from the first third, 15 from the second, 20 from the last.
    Returns a set of indices, identical to Improved DDPM's (Python rounding).
    """
    num_timesteps = check_positive_int("num_timesteps", num_timesteps)
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = _parse_count(section_counts[len("ddim"):], section_counts)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return set(range(0, num_timesteps, stride))
        if desired == num_timesteps == 1:
            return {0}
        raise ValueError(
            f"`section_counts`: Cannot take exactly {desired} of {num_timesteps} steps with an integer stride. "
            f"Received: section_counts={section_counts!r}"
        )
    counts = _parse_sections(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"`section_counts`: Cannot take {count} steps from a section of {size} steps "
                f"({num_timesteps} steps in {len(counts)} sections). Received: section_counts={section_counts!r}"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return set(steps)


def respaced_steps(alphas_cumprod, section_counts):
    """The steps of a process with `alphas_cumprod` kept by `section_counts`: those of
    `space_timesteps`, or of `space_by_noise_level` for "logsnrN" and "karrasN"."""
    if isinstance(section_counts, str) and section_counts.startswith(NOISE_SPACINGS):
        return space_by_noise_level(alphas_cumprod, section_counts)
    return space_timesteps(len(alphas_cumprod), section_counts)


def space_by_noise_level(alphas_cumprod, section_counts):
    """The N steps kept by "logsnrN" or "karrasN", from the last step to the first.

    "logsnrN" spaces them evenly in log-SNR, log(alpha_bar / (1 - alpha_bar)), as
    DPM-Solver does; "karrasN" evenly in sigma^(1/7), where sigma =
    sqrt(1/alpha_bar - 1) is the noise level of x_t / sqrt(alpha_bar) (Karras et al.
    2022, rho = 7: more steps at high noise than "logsnrN", the limit of large rho,
    and more at low noise than even steps in sigma). Each target level is rounded to
    the step of nearest log-SNR; where targets round to the same step, some move to
    the nearest free steps, so that exactly N distinct steps are kept. Returns a set.
    """
    ac = np.asarray(alphas_cumprod, np.float64)
    prefix = next(p for p in NOISE_SPACINGS if section_counts.startswith(p))
    digits = section_counts[len(prefix):]
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= len(ac):
        raise ValueError(f'`section_counts` "{prefix}N" takes N in [1, {len(ac)}] (the steps of the process). '
                         f"Received: section_counts={section_counts!r}")
    log_snr = np.log(ac) - np.log1p(-ac)  # decreasing in t
    fractions = np.linspace(0.0, 1.0, int(digits))
    if prefix == "logsnr":
        targets = log_snr[-1] + fractions * (log_snr[0] - log_snr[-1])
    else:
        ramp = np.exp(-log_snr[[-1, 0]] / (2 * KARRAS_RHO))  # sigma^(1/rho) at both ends
        targets = -2 * KARRAS_RHO * np.log(ramp[0] + fractions * (ramp[1] - ramp[0]))
    steps = np.sort(np.abs(log_snr[None, :] - targets[:, None]).argmin(axis=1))
    return set(_distinct(steps, len(ac)))


def _distinct(steps, num_timesteps):
    """Sorted steps made strictly increasing within [0, num_timesteps), each moved as little as needed."""
    steps = [int(step) for step in steps]
    for i in range(1, len(steps)):  # each above the one before
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = min(steps[-1], num_timesteps - 1)
    for i in range(len(steps) - 2, -1, -1):  # and below the one after
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


def _parse_count(text, original):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            '`section_counts` must be "ddimN", "N", "N1,N2,..." or a list of positive integers. '
            f"Received: section_counts={original!r}"
        )
    return value


def _parse_sections(section_counts):
    if isinstance(section_counts, str):
        return [_parse_count(part, section_counts) for part in section_counts.split(",")]
    if is_int(section_counts):
        return [_parse_count(str(section_counts), section_counts)]
    try:
        counts = [_parse_count(part, section_counts) for part in section_counts]
    except TypeError:
        counts = []
    return counts or [_parse_count("", section_counts)]  # an empty list takes no step: refused
