"""GaussianDiffusion: forward process, reverse-process parameters, losses, samplers.

Paper sections 2.1 (diffusion models, hybrid loss, learned variances) and 4.4
(continuous noise-level conditioning). Names follow the Improved DDPM reference.
The object is config-only: schedule buffers are float64 numpy arrays computed at
construction and cast to float32 tensors on use; all math runs in float32
whatever the model's dtype policy. `t` is an integer step index in 0..T-1.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_cdm import losses
from keras_cdm import schedules as sched
from keras_cdm import solvers
from keras_cdm._validation import check_choice, check_config, check_finite, check_size, is_int, shown
from keras_cdm.seeding import INITIAL_NOISE_COUNTER, stateless_normal, step_counter

PREDICTIONS = ("epsilon", "x_start")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")
LOSSES = ("mse", "hybrid")
SAMPLERS = ("ancestral", "ddim") + tuple(solvers.SOLVERS)


@keras.saving.register_keras_serializable(package="keras_cdm")
class GaussianDiffusion:
    """A Gaussian diffusion process and its learned reverse process.

    Args:
        num_timesteps: T of the (training) process.
        schedule: "linear" (scaled by 1000/T) or "cosine".
        beta_start, beta_end: ends of a linear schedule (default: Improved DDPM's).
        section_counts: respace the process to a subset of its steps (see
            `schedules.respaced_steps`), e.g. "100", "ddim50" or "logsnr20"; always
            relative to the `num_timesteps` steps of the original process.
        prediction: what the network predicts: "epsilon" or "x_start".
        variance: "fixed_small" (posterior variance), "fixed_large" (beta_t),
            or "learned_range" (Improved DDPM: the network's extra channels v
            interpolate log-variances between the two).
        loss: "mse" (L_simple) or "hybrid" (L_simple + the variational bound,
            which trains the variances; requires `variance="learned_range"`).
        conditioning: what the network is conditioned on: "timestep" (the
            original step index) or "noise_level" (continuous
            `sqrt(alpha_bar)`, section 4.4).

    Attributes: the arguments above (`original_num_timesteps` holds the
    `num_timesteps` argument), `num_timesteps` (steps of this process: fewer
    after respacing), `timestep_map` (the original step of each step) and the
    float64 schedule buffers (`betas`, `alphas_cumprod`, ...).

    Example:
    >>> diffusion = GaussianDiffusion(4000, "cosine", variance="learned_range", loss="hybrid")
    >>> fast = diffusion.respace("100")
    >>> fast.num_timesteps, int(fast.timestep_map[-1])
    (100, 3999)
    """

    def __init__(
        self,
        num_timesteps=1000,
        schedule="linear",
        beta_start=None,
        beta_end=None,
        section_counts=None,
        prediction="epsilon",
        variance="fixed_small",
        loss="mse",
        conditioning="timestep",
    ):
        self.original_num_timesteps = check_size("num_timesteps", num_timesteps)
        self.schedule = check_choice("schedule", schedule, sched.SCHEDULES)
        self.beta_start = None if beta_start is None else check_finite("beta_start", beta_start, 0.0, 1.0)
        self.beta_end = None if beta_end is None else check_finite("beta_end", beta_end, 0.0, 1.0)
        if not (section_counts is None or isinstance(section_counts, str) or is_int(section_counts) or (
                isinstance(section_counts, (list, tuple)) and all(is_int(count) for count in section_counts))):
            raise ValueError('`section_counts` must be None, a string such as "100" or "ddim50", or integers. '
                             f"Received: section_counts={shown(section_counts)}")
        self.section_counts = list(section_counts) if isinstance(section_counts, (list, tuple)) else section_counts
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        self.variance = check_choice("variance", variance, VARIANCES)
        self.loss = check_choice("loss", loss, LOSSES)
        self.conditioning = check_choice("conditioning", conditioning, sched.CONDITIONINGS)
        _check_combination(self.loss, self.variance, self.conditioning)
        base = sched.get_beta_schedule(schedule, num_timesteps, beta_start, beta_end)
        kept = range(num_timesteps)
        if section_counts is not None:
            kept = sorted(sched.respaced_steps(np.cumprod(1.0 - base), section_counts))
            base = _respaced_betas(base, kept)
        self._set_buffers(base, np.asarray(kept, dtype=np.int64))
        self._tensors = {}

    def _set_buffers(self, betas, timestep_map):
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        self.num_timesteps = len(betas)
        self.timestep_map = timestep_map
        self.betas = betas
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = ac_prev
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1.0)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # The posterior variance is 0 at t = 0: clip its log with the value at t = 1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if len(betas) > 1 else np.maximum(self.posterior_variance, 1e-20)
        )
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        self.log_betas = np.log(betas)
        self.log_beta_over_posterior_variance = self.log_betas - self.posterior_log_variance_clipped
        self.posterior_variance_clipped = np.exp(self.posterior_log_variance_clipped)
        # "fixed_large" uses beta_t, with the posterior variance at t = 0 (Improved DDPM).
        self.fixed_large_variance = np.append(self.posterior_variance[1:2], betas[1:]) if len(betas) > 1 else betas

    # -- config ---------------------------------------------------------------

    def get_config(self):
        return {
            "num_timesteps": self.original_num_timesteps,
            "schedule": self.schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "section_counts": self.section_counts,
            "prediction": self.prediction,
            "variance": self.variance,
            "loss": self.loss,
            "conditioning": self.conditioning,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**check_config(cls, config, extra=()))

    def respace(self, section_counts):
        """The same process restricted to the steps chosen by `section_counts`."""
        return GaussianDiffusion(**{**self.get_config(), "section_counts": section_counts})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if v is not None)
        return f"GaussianDiffusion({args})"

    # -- helpers --------------------------------------------------------------

    def _tensor(self, name):
        # Cached per backend-agnostic name; converted lazily, float32 (int32 for the map).
        if name not in self._tensors:
            dtype = "int32" if name == "timestep_map" else "float32"
            self._tensors[name] = np.asarray(getattr(self, name), dtype=dtype)
        return ops.convert_to_tensor(self._tensors[name])

    def _solver_table(self, sampler):
        """The float32 coefficient table of a multistep sampler (see `solvers`), cached."""
        key = f"solver_table/{sampler}"
        if key not in self._tensors:
            self._tensors[key] = solvers.coefficient_table(self.alphas_cumprod, sampler).astype("float32")
        return ops.convert_to_tensor(self._tensors[key])

    def _extract(self, name, t, ndim=4):
        """`buffer[t]` for a batch of steps, shaped to broadcast against NHWC."""
        values = ops.take(self._tensor(name), ops.cast(t, "int32"), axis=0)
        return ops.reshape(values, (-1,) + (1,) * (ndim - 1))

    def model_conditioning(self, t):
        """What the network sees for step `t`: the original step index (float32)
        or, with `conditioning="noise_level"`, `sqrt(alpha_bar_t)`."""
        if self.conditioning == "noise_level":
            return self._extract("sqrt_alphas_cumprod", t, ndim=1)
        return ops.cast(self._extract("timestep_map", t, ndim=1), "float32")

    # -- forward process --------------------------------------------------------

    def q_sample(self, x_start, t, noise):
        """Draws x_t ~ q(x_t | x_0) with the given standard normal `noise`."""
        x_start, noise = ops.cast(x_start, "float32"), ops.cast(noise, "float32")
        return (
            self._extract("sqrt_alphas_cumprod", t) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t) * noise
        )

    def sample_noise_levels(self, t, seed=None):
        """Continuous levels `sqrt(alpha_bar)` drawn uniformly between those of
        steps t-1 and t (SR3 / WaveGrad; section 4.4), with alpha_bar_{-1} = 1."""
        low = self._extract("sqrt_alphas_cumprod", t, ndim=1)
        high = ops.sqrt(self._extract("alphas_cumprod_prev", t, ndim=1))
        u = keras.random.uniform(ops.shape(low), seed=seed)
        return low + (high - low) * u

    def q_sample_at_noise_level(self, x_start, noise_levels, noise):
        """x = level * x_0 + sqrt(1 - level^2) * noise, for continuous levels."""
        x_start, noise = ops.cast(x_start, "float32"), ops.cast(noise, "float32")
        level = ops.reshape(ops.cast(noise_levels, "float32"), (-1, 1, 1, 1))
        return level * x_start + ops.sqrt(1.0 - ops.square(level)) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        x_start, x_t = ops.cast(x_start, "float32"), ops.cast(x_t, "float32")
        mean = self._extract("posterior_mean_coef1", t) * x_start + self._extract("posterior_mean_coef2", t) * x_t
        return mean, self._extract("posterior_variance", t), self._extract("posterior_log_variance_clipped", t)

    # -- reverse process ----------------------------------------------------------

    def predict_xstart_from_eps(self, x_t, t, eps):
        return self._extract("sqrt_recip_alphas_cumprod", t) * x_t - self._extract("sqrt_recipm1_alphas_cumprod", t) * eps

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (self._extract("sqrt_recip_alphas_cumprod", t) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t
        )

    def p_mean_variance(self, model_output, x_t, t, clip_denoised=True):
        """Parameters of p(x_{t-1} | x_t) from the network output.

        With learned variances `model_output` is (B, H, W, 2C): the prediction
        first, v last. Returns dict(mean, variance, log_variance, pred_xstart).
        """
        model_output, x_t = ops.cast(model_output, "float32"), ops.cast(x_t, "float32")
        if self.variance == "learned_range":
            # log var = frac * log(beta) + (1 - frac) * log(var_posterior_clipped), written
            # as an offset from the float64 buffers so float32 keeps full precision.
            model_output, v = ops.split(model_output, 2, axis=-1)
            gap = (v + 1.0) / 2.0 * self._extract("log_beta_over_posterior_variance", t)
            log_variance = self._extract("posterior_log_variance_clipped", t) + gap
            variance = self._extract("posterior_variance_clipped", t) * ops.exp(gap)
        else:
            name = "posterior_variance" if self.variance == "fixed_small" else "fixed_large_variance"
            variance = ops.broadcast_to(self._extract(name, t), ops.shape(x_t))
            log_variance = ops.log(variance) if self.variance == "fixed_large" else ops.broadcast_to(
                self._extract("posterior_log_variance_clipped", t), ops.shape(x_t)
            )
        pred_xstart = self._xstart(model_output, x_t, t, clip_denoised)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def predict_xstart(self, model_output, x_t, t, clip_denoised=True):
        """The network's prediction of x_0 (the data prediction of DPM-Solver++), from
        the first half of the channels when variances are learned; clipped to [-1, 1]
        with `clip_denoised`."""
        model_output, x_t = ops.cast(model_output, "float32"), ops.cast(x_t, "float32")
        if self.variance == "learned_range":
            model_output, _ = ops.split(model_output, 2, axis=-1)
        return self._xstart(model_output, x_t, t, clip_denoised)

    def _xstart(self, prediction, x_t, t, clip_denoised):
        if self.prediction == "epsilon":
            prediction = self.predict_xstart_from_eps(x_t, t, prediction)
        return ops.clip(prediction, -1.0, 1.0) if clip_denoised else prediction

    # -- losses -------------------------------------------------------------------

    def training_losses(self, model_output, x_start, t, noise, noise_levels=None, x_t=None):
        """Per-example training terms: dict(loss, mse[, vb]).

        `mse` is L_simple (mean over pixels). `vb` is the variational-bound term
        in bits per dimension, computed with a stop-gradient on the predicted
        mean (so it trains only the variances) and rescaled by T / 1000; at
        t = 0 it is the discretized Gaussian decoder NLL. `loss` is `mse`, plus
        `vb` for the hybrid loss. With `noise_levels` (continuous conditioning)
        x_t is drawn at those levels and only `loss` and `mse` are returned.
        `x_t` is the noisy input the network saw, `q_sample(x_start, t, noise)`
        (computed here when not given).
        """
        x_start, noise = ops.cast(x_start, "float32"), ops.cast(noise, "float32")
        model_output = ops.cast(model_output, "float32")
        if (noise_levels is None) == (self.conditioning == "noise_level"):
            raise ValueError(
                "Pass `noise_levels` exactly when conditioning='noise_level'. "
                f"Received: conditioning={self.conditioning!r}, noise_levels={'given' if noise_levels is not None else None}"
            )
        prediction = model_output
        if self.variance == "learned_range":
            prediction, v = ops.split(model_output, 2, axis=-1)
        target = noise if self.prediction == "epsilon" else x_start
        mse = losses.mean_flat(ops.square(target - prediction))
        if noise_levels is not None:
            return {"loss": mse, "mse": mse}
        x_t = self.q_sample(x_start, t, noise) if x_t is None else ops.cast(x_t, "float32")
        frozen = ops.stop_gradient(prediction)
        v = v if self.variance == "learned_range" else None
        vb = self._vb_terms_bpd(frozen, v, x_start, x_t, t, noise) * (self.num_timesteps / 1000.0)
        loss = mse + vb if self.loss == "hybrid" else mse
        return {"loss": loss, "mse": mse, "vb": vb}

    def _vb_terms_bpd(self, prediction, v, x_start, x_t, t, noise):
        """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits, or the decoder NLL at t = 0.

        Written to stay accurate in float32 where the textbook form cancels:
        the log-variance gap comes from the float64 buffer log(beta_t / var_t)
        instead of subtracting two nearly equal logs, `exp(d) - 1 - d` uses a
        series for small gaps, and the mean gap is `coef1 * (x_0 - pred_x0)`
        (for epsilon prediction `coef1 * sqrt(1/alpha_bar - 1) * (eps - noise)`)
        instead of a difference of two means that share `coef2 * x_t`.
        """
        min_log = self._extract("posterior_log_variance_clipped", t)
        if v is not None:
            frac = (v + 1.0) / 2.0
            gap = frac * self._extract("log_beta_over_posterior_variance", t)
            model_log_variance, log_gap = min_log + gap, -gap
        elif self.variance == "fixed_large":
            model_log_variance = ops.log(self._extract("fixed_large_variance", t))
            log_gap = min_log - model_log_variance
        else:
            model_log_variance, log_gap = min_log, ops.zeros_like(min_log)
        if self.prediction == "epsilon":
            mean_gap = self._extract("posterior_mean_coef1", t) * self._extract(
                "sqrt_recipm1_alphas_cumprod", t) * (prediction - noise)
        else:
            mean_gap = self._extract("posterior_mean_coef1", t) * (x_start - prediction)
        kl = 0.5 * (_expm1_minus_identity(log_gap) + ops.square(mean_gap) * ops.exp(-model_log_variance))
        kl = losses.mean_flat(kl + ops.zeros_like(x_t)) / math.log(2.0)
        model_output = prediction if v is None else ops.concatenate([prediction, v], axis=-1)
        decoder_mean = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)["mean"]
        log_scales = 0.5 * model_log_variance + ops.zeros_like(x_t)
        nll = -losses.mean_flat(
            losses.discretized_gaussian_log_likelihood(x_start, decoder_mean, log_scales)
        ) / math.log(2.0)
        return ops.where(ops.equal(ops.cast(t, "int32"), 0), nll, kl)

    # -- sampling -----------------------------------------------------------------

    def p_sample(self, model_output, x_t, t, noise, clip_denoised=True):
        """One ancestral step x_t -> x_{t-1} (no noise is added at t = 0)."""
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised)
        nonzero = self._nonzero_mask(t)
        return out["mean"] + nonzero * ops.exp(0.5 * out["log_variance"]) * ops.cast(noise, "float32")

    def ddim_sample(self, model_output, x_t, t, noise, eta=0.0, clip_denoised=True):
        """One DDIM step x_t -> x_{t-1}; `eta=0` is deterministic, `eta=1` ~ ancestral."""
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised)
        x_t = ops.cast(x_t, "float32")
        eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
        ac = self._extract("alphas_cumprod", t)
        ac_prev = self._extract("alphas_cumprod_prev", t)
        sigma = eta * ops.sqrt((1.0 - ac_prev) / (1.0 - ac)) * ops.sqrt(1.0 - ac / ac_prev)
        mean = out["pred_xstart"] * ops.sqrt(ac_prev) + ops.sqrt(1.0 - ac_prev - ops.square(sigma)) * eps
        return mean + self._nonzero_mask(t) * sigma * ops.cast(noise, "float32")

    @staticmethod
    def _nonzero_mask(t):
        return ops.reshape(ops.cast(ops.not_equal(ops.cast(t, "int32"), 0), "float32"), (-1, 1, 1, 1))

    def sample_step(self, denoise_fn, x_t, t, seed, sampler="ancestral", eta=0.0, clip_denoised=True):
        """One reverse step from x at step `t` (a scalar) to step t-1.

        `denoise_fn(x_t, conditioning)` returns the network output, where
        `conditioning` is `model_conditioning(t)` for the batch (original step
        indices, or noise levels). The step's noise is a pure function of
        `(seed, t)`, so a Python loop over `sample_step` and the compiled
        `sample_loop` give the same samples. For a multistep sampler ("dpm++...",
        see `solvers`) `x_t` is a loop state (`solvers.initial_state`), and so is
        the result.
        """
        check_choice("sampler", sampler, SAMPLERS)
        if solvers.is_multistep(sampler):
            return self._solver_step(denoise_fn, x_t, t, seed, sampler, clip_denoised)
        x_t = ops.cast(x_t, "float32")
        model_output, steps = self._denoise(denoise_fn, x_t, t)
        noise = stateless_normal(ops.shape(x_t), seed, step_counter(t))
        if sampler == "ancestral":
            return self.p_sample(model_output, x_t, steps, noise, clip_denoised)
        return self.ddim_sample(model_output, x_t, steps, noise, eta, clip_denoised)

    def _denoise(self, denoise_fn, x_t, t):
        """The network output at step `t` (a scalar) for the batch `x_t`, and the batch of steps."""
        steps = ops.zeros_like(ops.cast(x_t[:, 0, 0, 0], "int32")) + ops.cast(t, "int32")
        return denoise_fn(x_t, self.model_conditioning(steps)), steps

    def _solver_step(self, denoise_fn, state, t, seed, sampler, clip_denoised):
        """One step of a DPM-Solver++ sampler: the data prediction, then `solvers.solver_step`."""
        x_t = state[0]
        model_output, steps = self._denoise(denoise_fn, x_t, t)
        x_start = self.predict_xstart(model_output, x_t, steps, clip_denoised)
        _, stochastic = solvers.SOLVERS[sampler]
        noise = stateless_normal(ops.shape(x_t), seed, step_counter(t)) if stochastic else None
        return solvers.solver_step(self._solver_table(sampler), state, x_start, t, self.num_timesteps, sampler, noise)

    def sample_loop(self, denoise_fn, x, seed, start_step=None, stop_step=None,
                    sampler="ancestral", eta=0.0, clip_denoised=True):
        """Runs the reverse process in one `ops.fori_loop`.

        Args:
            denoise_fn: `(x_t, conditioning) -> model_output` (see `sample_step`).
            x: the sample at step `start_step`: pure noise (`initial_noise`) to
                sample from scratch, or e.g. `q_sample(x_0, s, noise)` to restart
                the reverse process from a re-noised sample.
            seed: integer seed (Python int or scalar tensor) of the step noises,
                or a vector of one seed per example (see `stateless_normal`).
            start_step: step of `x`; defaults to T-1 (pure noise).
            stop_step: None to run down to x_0; s to stop early and return the
                sample at step s (z_s, for truncated conditioning augmentation).
            sampler: "ancestral", "ddim", or a DPM-Solver++ sampler: "dpm++2m",
                "dpm++3m", "dpm++2m-sde" (see `solvers`; a run from `start_step`
                begins with first-order steps, as it has no earlier predictions).
            eta: DDIM noise scale.
            clip_denoised: clip the predicted x_0 to [-1, 1].
        """
        start = self.num_timesteps - 1 if start_step is None else start_step
        stop = -1 if stop_step is None else stop_step
        self.check_steps(start, stop)
        state = solvers.initial_state(x, sampler)
        state = self.run_steps(denoise_fn, state, seed, start, start - stop, sampler, eta, clip_denoised)
        return solvers.state_sample(state)

    def run_steps(self, denoise_fn, x, seed, start_step, num_steps, sampler="ancestral", eta=0.0,
                  clip_denoised=True):
        """`num_steps` reverse steps from step `start_step` in one `ops.fori_loop`.

        Unlike `sample_loop`, `start_step` and `num_steps` may be tensors, so one
        compiled function runs a whole chain or its successive chunks (progress bars).
        For a multistep sampler `x` is its loop state (`solvers.initial_state`) and
        so is the result: a chain run in chunks is the same chain.
        """
        check_choice("sampler", sampler, SAMPLERS)
        start = ops.cast(start_step, "int32")

        def body(i, x_t):
            return self.sample_step(denoise_fn, x_t, start - i, seed, sampler, eta, clip_denoised)

        return ops.fori_loop(0, num_steps, body, x if isinstance(x, tuple) else ops.cast(x, "float32"))

    def initial_noise(self, shape, seed):
        """x_T ~ N(0, I) for `sample_loop`, a pure function of `seed`."""
        return stateless_normal(shape, seed, INITIAL_NOISE_COUNTER)

    def check_steps(self, start, stop):
        """Raises a ValueError unless 0 <= start <= T-1 and -1 <= stop < start (stop -1: run to x_0)."""
        last = self.num_timesteps - 1
        if not is_int(start) or not 0 <= start <= last:
            raise ValueError(f"`start_step` must be an integer in [0, {last}]. Received: start_step={start!r}")
        if not is_int(stop) or not -1 <= stop < start:
            raise ValueError(
                f"`stop_step` must be None or an integer in [0, start_step) = [0, {start}). "
                f"Received: stop_step={stop!r}"
            )


def _expm1_minus_identity(d):
    """exp(d) - 1 - d, accurate in float32 for small |d| (series) and large |d|."""
    series = ops.square(d) * (0.5 + d * (1.0 / 6 + d * (1.0 / 24 + d * (1.0 / 120 + d * (1.0 / 720 + d / 5040)))))
    return ops.where(ops.abs(d) < 0.1, series, ops.expm1(d) - d)


def _check_combination(loss, variance, conditioning):
    if (loss == "hybrid") != (variance == "learned_range"):
        raise ValueError(
            "The hybrid loss is what trains learned variances: use loss='hybrid' with "
            "variance='learned_range', and loss='mse' with fixed variances. "
            f"Received: loss={loss!r}, variance={variance!r}"
        )
    if conditioning == "noise_level" and variance == "learned_range":
        raise ValueError(
            "Continuous noise-level conditioning uses fixed variances (section 4.4). "
            f"Received: conditioning='noise_level', variance={variance!r}"
        )


def _respaced_betas(betas, kept):
    """Betas of the process that keeps only the steps in `kept` (sorted)."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    last, new_betas = 1.0, []
    for i in kept:
        new_betas.append(1.0 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return np.asarray(new_betas, dtype=np.float64)
