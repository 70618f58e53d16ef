"""DPM-Solver++ (Lu et al. 2022): multistep samplers of the probability-flow ODE (and SDE).

With x_t = alpha_t x_0 + sigma_t eps and lambda_t = log(alpha_t / sigma_t), the exact
solution of the probability-flow ODE from step t to step u, written with the network's
data prediction x_theta (its x_0 prediction), is

    x_u = (sigma_u / sigma_t) x_t + sigma_u * integral_{lambda_t}^{lambda_u} e^lambda x_theta d lambda.

A multistep solver replaces x_theta by a polynomial through its values at the last
steps, so each step costs one network evaluation:

- order 1 (x_theta constant) is DDIM with eta = 0;
- "dpm++2m" (the paper's Algorithm 2) holds x_theta at its linear extrapolation to the
  midpoint of the step in lambda;
- "dpm++3m" integrates the polynomial through the last three predictions exactly (an
  exponential Adams-Bashforth step of order 3). The third-order step of the reference
  implementations (DPM-Solver, diffusers, k-diffusion) weights the second difference by
  half of this, which makes it second order (see docs/sampling.md);
- "dpm++2m-sde" is SDE-DPM-Solver++(2M): the same for the reverse SDE, whose first-order
  step is the ancestral step with the posterior variance ("fixed_small").

The first steps of a run use the orders their history allows; the last step, to sigma = 0,
returns the data prediction (so the one before it is at most of order 2). All
coefficients depend only on the process's steps: they are computed once, in float64, as
a table of rows [a, c_0, ..., c_{k-1}, b] of x_u = a x_t + sum_j c_j D_j + b z, where
D_0 is the data prediction at step t, D_j the one j steps earlier and z the step noise.
"""

import numpy as np
from keras import ops

SOLVERS = {"dpm++2m": (2, False), "dpm++3m": (3, False), "dpm++2m-sde": (2, True)}
"""Sampler name -> (order, stochastic)."""


def is_multistep(sampler):
    return sampler in SOLVERS


def coefficient_table(alphas_cumprod, sampler):
    """float64 array (order * N, order + 2): row `(k - 1) * N + t` holds the coefficients
    [a, c_0, ..., c_{order-1}, b] of the step from step t to t-1 (to x_0 from t = 0) of
    order k, for a process of N steps with `alphas_cumprod`."""
    order, stochastic = SOLVERS[sampler]
    ac = np.asarray(alphas_cumprod, np.float64)
    lam = 0.5 * (np.log(ac) - np.log1p(-ac))
    n = len(ac)
    rows = [_row(ac, lam, t, min(k, t + 1, n - t), order, stochastic) for k in range(1, order + 1) for t in range(n)]
    return np.stack(rows)


def _row(ac, lam, t, k, order, stochastic):
    """The coefficients of the order-k step from step t (k <= t + 1 and k <= N - t)."""
    row = np.zeros(order + 2)
    if t == 0:  # the last step, to sigma = 0: the data prediction itself
        row[1] = 1.0
        return row
    alpha_u, sigma_u, sigma_t = np.sqrt(ac[t - 1]), np.sqrt(1.0 - ac[t - 1]), np.sqrt(1.0 - ac[t])
    h = lam[t - 1] - lam[t]
    if stochastic:
        row[0] = sigma_u / sigma_t * np.exp(-h)
        weight = -alpha_u * np.expm1(-2.0 * h)
        row[-1] = sigma_u * np.sqrt(-np.expm1(-2.0 * h))
    else:
        row[0] = sigma_u / sigma_t
        weight = -alpha_u * np.expm1(-h)
    if order == 3:  # the polynomial through the last k predictions, integrated exactly
        row[1:1 + k] = alpha_u * _polynomial_weights(h, lam[t:t + k] - lam[t])
    elif k == 2:  # x_theta extrapolated linearly to the midpoint of the step
        half_over_r = 0.5 * h / (lam[t] - lam[t + 1])
        row[1:3] = weight * (1.0 + half_over_r), -weight * half_over_r
    else:
        row[1] = weight
    return row


def _polynomial_weights(h, nodes):
    """integral_0^h e^(tau - h) L_j(tau) d tau for the Lagrange basis L_j on `nodes`, the
    lambdas of the last steps minus the current one (0, then negative)."""
    moments = [-np.expm1(-h)]  # integral_0^h e^(tau - h) tau^m d tau, m = 0, 1, ...
    for m in range(1, len(nodes)):
        moments.append(h**m - m * moments[-1])
    weights = []
    for j, node in enumerate(nodes):
        others = np.delete(nodes, j)
        coefficients = np.atleast_1d(np.poly(others))[::-1]  # of tau^0, tau^1, ...
        weights.append(np.dot(coefficients, moments[:len(coefficients)]) / np.prod(node - others))
    return np.asarray(weights)


def initial_state(x, sampler):
    """The loop state of `sampler` for a sample `x`: `x` itself for one-step samplers;
    `(x, previous data predictions, steps taken)` for multistep ones."""
    x = ops.cast(x, "float32")
    if not is_multistep(sampler):
        return x
    order, _ = SOLVERS[sampler]
    return x, tuple(ops.zeros_like(x) for _ in range(order - 1)), ops.convert_to_tensor(0, "int32")


def state_sample(state):
    """The sample held by a loop state (see `initial_state`)."""
    return state[0] if isinstance(state, tuple) else state


def solver_step(table, state, x_start, t, num_timesteps, sampler, noise=None):
    """One step of a multistep `sampler` from step `t` (scalar) given the data prediction
    `x_start` at that step; `table` is `coefficient_table` as a float32 tensor. Returns
    the next state."""
    order, _ = SOLVERS[sampler]
    x_t, history, taken = state
    k = ops.minimum(taken + 1, order)  # the order the history allows
    row = ops.take(table, (k - 1) * num_timesteps + ops.cast(t, "int32"), axis=0)
    predictions = (x_start,) + history
    x = row[0] * x_t
    for j, prediction in enumerate(predictions):
        x = x + row[1 + j] * prediction
    if noise is not None:
        x = x + row[-1] * noise
    return x, predictions[:order - 1], taken + 1
