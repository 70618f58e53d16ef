"""Post-training searches over sampling settings (sections 3.2, 3.3, 4.3, 4.4; guidance).

The paper trains upsamplers amortized over the conditioning-augmentation level s
and over continuous noise levels, then picks s (Table 3) and the inference noise
schedule (Figure 8) by sample quality. Both searches take an `evaluate` callable,
`evaluate(uint8 images) -> {metric name: value}` (e.g. FID against reference
statistics, see `keras_cdm.evaluation`), print a table like the paper's, save a
plot, and can write the best setting into the pipeline's sampling settings.
"""

import itertools
import math
from pathlib import Path

import keras
import numpy as np

from keras_cdm._validation import check_image_shape, is_int
from keras_cdm.evaluation import compute_statistics, fid, histogram_distance, pixel_statistics
from keras_cdm.guidance import MAX_GUIDANCE_SCALE
from keras_cdm.images import from_uint8, to_uint8
from keras_cdm.pipeline import CascadedDiffusionPipeline


def sample_quality(extractor, reference=None, inception_score=True, batch_size=100):
    """An `evaluate` callable for the searches: images -> {"fid", "is", "is_std"}.

    `reference` is the `FeatureStatistics` of real images (FID is left out
    without it); the Inception Score needs an extractor that returns logits.
    """
    if reference is None and not inception_score:
        raise ValueError("Nothing to measure: pass `reference` statistics for FID and/or inception_score=True.")

    def evaluate(images):
        stats = compute_statistics(images, extractor, batch_size=batch_size, inception_score=inception_score)
        stats, score = stats if inception_score else (stats, None)
        scores = {} if reference is None else {"fid": fid(reference, stats)}
        if score is not None:
            scores["is"], scores["is_std"] = score.result()
        return scores

    return evaluate


def stage_diagnostics(pipeline, stage, evaluate, labels, low_res_images, seed=0, batch_size=16):
    """The compounding error of a cascade at `stage` (Tables 3a vs 3b): sample quality of
    the stage's output when it is conditioned on the earlier stages' samples vs on real
    low-resolution images (`low_res_images`, one per label), with the current sampling
    settings. Returns `{"generated": scores, "real": scores}`."""
    k = pipeline.stage_index(stage)
    if k == 0:
        raise ValueError("Stage diagnostics compare the conditioning of an upsampler (index >= 1). Received: stage=0")
    head = _head(pipeline, k)
    generated = head.generate(labels=labels, seed=seed, batch_size=batch_size, verbose=False)
    real = head.generate(labels=labels, seed=seed, batch_size=batch_size, start_stage=k,
                         low_res_images=low_res_images, verbose=False)
    return {"generated": dict(evaluate(generated)), "real": dict(evaluate(real))}


def baseline_comparison(pipeline, evaluate, labels, real_images, seed=0, interpolation="bicubic", stages=None,
                        batch_size=16, metric="fid", bins=32, intermediates=None, plot_path=None,
                        histogram_path=None, verbose=True):
    """Does each super-resolution stage beat a plain resize of its own inputs?

    The cascade samples `labels` once (with its sampling settings); for every upsampler
    (or the `stages` named), its outputs are scored next to the previous stage's samples
    resized to its size by `interpolation` (no model at all): by `evaluate` (e.g. a
    domain FID, `sample_quality`) and by pixel statistics against the real images at
    that size, `real_images[stage name]` (uint8, or floats in [-1, 1]): the near-black
    fraction and the total-variation distance between pixel-value histograms
    (`evaluation.pixel_statistics`, `histogram_distance`). A feature metric can be blind
    to grain that a person sees at once; the pixel statistics are not.

    Args:
        evaluate: `evaluate(uint8 images) -> dict` with `metric`, or a dict from stage
            name to such a callable (feature extractors often depend on the size).
        real_images: dict from stage name to real images at that stage's size.
        intermediates: the per-stage samples of `labels` from an earlier
            `pipeline.generate(..., return_intermediates=True)` (uint8 or floats in
            [-1, 1]), to score them without sampling again; the cascade samples
            `labels` with `seed` when None.
        plot_path: a PNG of `metric` per stage, stage vs resize.
        histogram_path: a PNG of the pixel-value histograms (log scale) of the real
            images, the stage's outputs and the resize, one panel per stage.

    Returns a `SearchResult` whose rows are (stage, images = "stage" or the
    interpolation) with the scores; `result.best` is meaningless across stages: read
    `stage_beats_baseline(result)`.
    """
    names = pipeline.stage_names
    chosen = [pipeline.stage_index(s) for s in (stages if stages is not None else names[1:])]
    if not chosen or 0 in chosen:
        raise ValueError(f"`stages` must name super-resolution stages (not the base stage {names[0]!r}). "
                         f"Received: stages={stages!r}")
    truncated = [names[k] for k in chosen if pipeline.plans[k].truncated]
    if truncated:
        raise ValueError(f"Stages {truncated} sample with truncated augmentation: the previous stage hands them z_s, "
                         "not an image to resize. Compare with truncated=False.")
    missing = [names[k] for k in chosen if not isinstance(real_images, dict) or names[k] not in real_images]
    if missing:
        raise ValueError(f"`real_images` must map every compared stage to real images at its size. Missing: {missing}")
    samples = _intermediates(pipeline, chosen, labels, intermediates) if intermediates is not None else \
        pipeline.generate(labels=labels, seed=seed, batch_size=batch_size, return_intermediates=True,
                          output="float", verbose=False)[1]
    rows, histograms = [], {}
    for k in chosen:
        size, real = pipeline.stages[k].unet.image_size, real_images[names[k]]
        previous, outputs = (from_uint8(np.asarray(samples[names[j]]), name=f"intermediates[{names[j]!r}]")
                             for j in (k - 1, k))
        resized = keras.ops.convert_to_numpy(keras.ops.image.resize(previous, (size, size),
                                                                     interpolation=interpolation))
        score = evaluate[names[k]] if isinstance(evaluate, dict) else evaluate
        real_statistics = pixel_statistics(real, bins)
        histograms[names[k]] = {"real": real_statistics["histogram"]}
        for kind, images in (("stage", outputs), (interpolation, resized)):
            images = to_uint8(images)
            statistics = pixel_statistics(images, bins)
            histograms[names[k]][kind] = statistics["histogram"]
            rows.append({"stage": names[k], "images": kind, **_scores(score, images, metric),
                         "near_black": statistics["near_black"],
                         "histogram_distance": histogram_distance(images, real, bins)})
        if verbose:
            print(f"{names[k]}: real images have near_black={real_statistics['near_black']:.4g}")
    result = SearchResult(f"Stages vs a {interpolation} resize of their inputs ({len(labels)} samples)",
                          ["stage", "images"], rows, metric, True)
    _finish(result, verbose, plot_path, x="images", group="stage")
    if histogram_path is not None:
        _plot_histograms(histograms, histogram_path, f"Pixel values: stages vs a {interpolation} resize")
    return result


def _intermediates(pipeline, chosen, labels, intermediates):
    """The given per-stage samples, checked: every compared stage and its input, one image per label."""
    names, count = pipeline.stage_names, len(labels)
    needed = sorted({names[j] for k in chosen for j in (k - 1, k)}, key=names.index)
    bad = [name for name in needed if not isinstance(intermediates, dict) or name not in intermediates
           or np.shape(intermediates[name])[:1] != (count,)]
    if bad:
        shapes = {name: np.shape(intermediates[name]) for name in needed
                  if isinstance(intermediates, dict) and name in intermediates}
        raise ValueError(f"`intermediates` must map each of {needed} to one image per label ({count}). "
                         f"Wrong or missing: {bad}; received shapes: {shapes}")
    for k in chosen:
        check_image_shape(f"intermediates[{names[k]!r}]", np.shape(intermediates[names[k]]),
                          pipeline.stages[k].unet.image_size, pipeline.stages[k].unet.image_channels, batch=count,
                          where="")
    return intermediates


def _plot_histograms(histograms, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(histograms), figsize=(4.5 * len(histograms), 3.5), dpi=100, squeeze=False)
    for axis, (stage, curves) in zip(axes[0], histograms.items()):
        for label, histogram in curves.items():
            centres = (np.arange(len(histogram)) + 0.5) / len(histogram)
            axis.semilogy(centres, np.where(histogram > 0, histogram, np.nan), marker=".", label=label)
        axis.set_title(stage, fontsize=9)
        axis.set_xlabel("pixel value (0 = black)")
        axis.set_ylabel("fraction of pixels")
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def stage_beats_baseline(result):
    """{stage name: True when the stage beats the resize on the metric and on the pixel
    histogram distance} for a `baseline_comparison` result."""
    verdicts = {}
    for stage in dict.fromkeys(row["stage"] for row in result.rows):
        ours, resize = [row for row in result.rows if row["stage"] == stage]
        verdicts[stage] = bool(ours[result.metric] < resize[result.metric]
                               and ours["histogram_distance"] < resize["histogram_distance"])
    return verdicts


class SearchResult:
    """Rows of a search: dicts of settings and metrics, in the order evaluated."""

    def __init__(self, title, settings_keys, rows, metric, lower_is_better):
        self.title, self.settings_keys, self.rows = title, list(settings_keys), list(rows)
        self.metric, self.lower_is_better = metric, lower_is_better

    @property
    def best(self):
        """The row with the best `metric`."""
        pick = min if self.lower_is_better else max
        return pick(self.rows, key=lambda row: row[self.metric])

    def table(self):
        """A plain-text table like the paper's Table 3; the best row is starred."""
        metrics = [k for k in self.rows[0] if k not in self.settings_keys]
        header = self.settings_keys + metrics
        lines = [self.title, "  ".join(f"{h:>12s}" for h in header)]
        best = self.best
        for row in self.rows:
            cells = [f"{_format(row[k]):>12s}" for k in header]
            lines.append("  ".join(cells) + ("  *" if row is best else ""))
        return "\n".join(lines)

    def plot(self, path, x=None, group=None):
        """Saves `metric` against setting `x` (one line per value of `group`) as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = x or self.settings_keys[-1]
        figure, axis = plt.subplots(figsize=(5, 3.5), dpi=100)
        groups = sorted({str(r[group]) for r in self.rows}) if group else [None]
        for name in groups:
            rows = [r for r in self.rows if group is None or str(r[group]) == name]
            axis.plot([r[x] for r in rows], [r[self.metric] for r in rows], marker="o",
                      label=None if name is None else f"{group}={name}")
        axis.set_xlabel(x)
        axis.set_ylabel(self.metric)
        axis.set_title(self.title, fontsize=9)
        if group:
            axis.legend(fontsize=8)
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        plt.close(figure)
        return Path(path)


def search_augmentation_level(pipeline, stage, levels, evaluate, labels, seed=0, modes=("non_truncated", "truncated"),
                              low_res_images=None, metric="fid", lower_is_better=True, batch_size=16,
                              plot_path=None, apply_best=False, verbose=True):
    """Sample quality of a Gaussian-augmented upsampler as a function of s (Table 3).

    The cascade runs up to and including `stage`, and `evaluate` scores its
    output. Conditioning is either generated by the earlier stages (Table 3a; in
    "non_truncated" mode they run once and every s re-noises their samples, in
    "truncated" mode the previous stage stops at z_s for each s), or the given
    real `low_res_images` (Table 3b: the mode is then "ground_truth").

    Args:
        pipeline: a `CascadedDiffusionPipeline`.
        stage: the upsampler (name or index), with Gaussian conditioning augmentation.
        levels: the values of s to try (0 = no augmentation).
        evaluate: `evaluate(uint8 images) -> dict` of metrics, including `metric`.
        labels: the class labels of the samples (their number is the sample count).
        modes: which of "non_truncated" and "truncated" to search.
        low_res_images: real low-resolution images (one per label) instead of
            generated ones.
        plot_path: where to save the plot (PNG), if given.
        apply_best: write the best (s, mode) into `pipeline`'s sampling settings.

    Returns a `SearchResult`.
    """
    k = pipeline.stage_index(stage)
    augmentation = pipeline.stages[k].augmentation
    if augmentation is None or not augmentation.max_sampling_level:
        raise ValueError(f"Stage {pipeline.stage_names[k]!r} has no Gaussian conditioning augmentation to search. "
                         f"Received: stage={stage!r}")
    levels = _check_levels(levels, augmentation.max_sampling_level)
    modes = ("ground_truth",) if low_res_images is not None else _check_modes(modes, k)
    head = _head(pipeline, k)
    head.set_sampling(k, augmentation_level=0, truncated=False)  # the previous stage runs to z_0
    previous = None if low_res_images is not None or k == 0 else head.generate(
        labels=labels, seed=seed, batch_size=batch_size, return_intermediates=True, output="float",
        verbose=False)[1][pipeline.stage_names[k - 1]]
    conditioning = low_res_images if low_res_images is not None else previous
    rows = []
    for mode, level in itertools.product(modes, levels):
        head.set_sampling(k, augmentation_level=level, truncated=mode == "truncated")
        if mode == "truncated":
            images = head.generate(labels=labels, seed=seed, batch_size=batch_size, verbose=False)
        else:
            images = head.generate(labels=labels, seed=seed, batch_size=batch_size, start_stage=k,
                                   low_res_images=conditioning, verbose=False)
        rows.append({"mode": mode, "s": level, **_scores(evaluate, images, metric)})
        if verbose:
            print(f"{mode:>14s}  s={level:<6d} " + "  ".join(f"{m}={_format(v)}" for m, v in rows[-1].items()
                                                               if m not in ("mode", "s")))
    result = SearchResult(f"Augmentation level of {pipeline.stage_names[k]} ({len(labels)} samples)",
                          ["mode", "s"], rows, metric, lower_is_better)
    _finish(result, verbose, plot_path, x="s", group="mode")
    if apply_best:
        best = result.best
        pipeline.set_sampling(k, augmentation_level=best["s"], truncated=best["mode"] == "truncated")
    return result


def search_noise_schedule(pipeline, stage, num_steps, evaluate, labels, seed=0, beta_starts=(1e-4, 1e-3, 1e-2),
                          beta_ends=(0.02, 0.1, 0.5), schedules=None, low_res_images=None, metric="fid",
                          lower_is_better=True, batch_size=16, plot_path=None, apply_best=False, verbose=True):
    """The inference noise schedule of a continuous-noise upsampler (section 4.4).

    Tries linear schedules of `num_steps` steps over a grid of (beta_start,
    beta_end) — or the given `schedules` (dicts of `GaussianDiffusion`
    arguments) — conditioned on the earlier stages' samples (generated once) or
    on real `low_res_images`. Returns a `SearchResult`; `apply_best` writes the
    best schedule into the pipeline's sampling settings.
    """
    k = pipeline.stage_index(stage)
    if pipeline.stages[k].diffusion.conditioning != "noise_level":
        raise ValueError(f"Stage {pipeline.stage_names[k]!r} is not conditioned on continuous noise levels: "
                         f"its schedule is fixed by training. Received: stage={stage!r}")
    if k == 0 and low_res_images is None:
        raise ValueError("A noise-schedule search runs on an upsampler (stage index >= 1). Received: stage=0")
    if schedules is None:
        schedules = [{"schedule": "linear", "num_timesteps": num_steps, "beta_start": a, "beta_end": b}
                     for a, b in itertools.product(beta_starts, beta_ends) if a < b]
    head = _head(pipeline, k)
    for schedule in schedules:  # refuse bad candidates before any sampling
        head.set_sampling(k, noise_schedule=schedule, num_steps=None)
    conditioning = low_res_images if low_res_images is not None else head.generate(
        labels=labels, seed=seed, batch_size=batch_size, return_intermediates=True, output="float",
        verbose=False)[1][pipeline.stage_names[k - 1]]
    rows = []
    for schedule in schedules:
        head.set_sampling(k, noise_schedule=schedule, num_steps=None)
        images = head.generate(labels=labels, seed=seed, batch_size=batch_size, start_stage=k,
                               low_res_images=conditioning, verbose=False)
        setting = {"beta_start": schedule.get("beta_start"), "beta_end": schedule.get("beta_end"),
                   "steps": schedule.get("num_timesteps", num_steps)}
        rows.append({**setting, **_scores(evaluate, images, metric)})
        if verbose:
            print("  ".join(f"{m}={_format(v)}" for m, v in rows[-1].items()))
    result = SearchResult(f"Inference noise schedule of {pipeline.stage_names[k]} ({len(labels)} samples)",
                          ["beta_start", "beta_end", "steps"], rows, metric, lower_is_better)
    _finish(result, verbose, plot_path, x="beta_end", group="beta_start")
    if apply_best:
        pipeline.set_sampling(k, noise_schedule=schedules[rows.index(result.best)], num_steps=None)
    return result


def search_guidance_scale(pipeline, stage, scales, evaluate, labels, seed=0, low_res_images=None, through_cascade=False,
                          metric="fid", lower_is_better=True, batch_size=16, plot_path=None, apply_best=False,
                          verbose=True):
    """Sample quality of a stage as a function of its classifier-free guidance scale.

    The stage (a U-Net with the null label, trained with `label_dropout`) samples with
    each of `scales`, conditioned (an upsampler) on the earlier stages' samples, drawn
    once with the current settings, or on real `low_res_images`. `evaluate` scores the
    stage's output, or with `through_cascade=True` the cascade's final output (the later
    stages with their current settings). Guidance trades diversity for fidelity: let
    `evaluate` return both kinds of score (e.g. FID, a recognition accuracy and
    `keras_cdm.precision_recall`) and pick the `metric` that decides.

    Args:
        pipeline: a `CascadedDiffusionPipeline`.
        stage: the stage (name or index) to guide.
        scales: the guidance scales to try (1 = no guidance, 0 = unconditional).
        evaluate: `evaluate(uint8 images) -> dict` of metrics, including `metric`.
        labels: the class labels of the samples (their number is the sample count).
        low_res_images: real low-resolution images (one per label) for an upsampler.
        plot_path: where to save the plot of `metric` against the scale (PNG).
        apply_best: write the best scale into `pipeline`'s sampling settings.

    Returns a `SearchResult`.
    """
    k = pipeline.stage_index(stage)
    scales = _check_scales(scales)
    for scale in scales:  # refuse a stage that cannot be guided before any sampling
        pipeline.stages[k].sampling_plan(**{**pipeline.sampling[k], "guidance_scale": scale})
    if labels is None:
        raise ValueError("Guidance needs class labels: pass `labels`, one per sample. Received: labels=None")
    head = CascadedDiffusionPipeline(pipeline.stages, pipeline.sampling) if through_cascade else _head(pipeline, k)
    # An upsampler starts from the earlier stages' samples, drawn once, unless it takes
    # their z_s (truncated augmentation): then every scale runs the cascade from the start.
    start = {}
    if k > 0 and (low_res_images is not None or not pipeline.plans[k].truncated):
        start = {"start_stage": k, "low_res_images": low_res_images if low_res_images is not None else _head(
            pipeline, k - 1).generate(labels=labels, seed=seed, batch_size=batch_size, output="float", verbose=False)}
    rows = []
    for scale in scales:
        head.set_sampling(k, guidance_scale=scale)
        images = head.generate(labels=labels, seed=seed, batch_size=batch_size, verbose=False, **start)
        rows.append({"guidance_scale": scale, **_scores(evaluate, images, metric)})
        if verbose:
            print("  ".join(f"{m}={_format(v)}" for m, v in rows[-1].items()))
    scored = pipeline.stage_names[-1] if through_cascade else pipeline.stage_names[k]
    result = SearchResult(f"Guidance scale of {pipeline.stage_names[k]}, scored at {scored} ({len(labels)} samples)",
                          ["guidance_scale"], rows, metric, lower_is_better)
    _finish(result, verbose, plot_path, x="guidance_scale", group=None)
    if apply_best:
        pipeline.set_sampling(k, guidance_scale=result.best["guidance_scale"])
    return result


def _check_scales(scales):
    scales = list(scales) if isinstance(scales, (list, tuple, range, np.ndarray)) else None
    if not scales or any(isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not math.isfinite(w)
                         or not 0 <= w <= MAX_GUIDANCE_SCALE for w in scales):
        raise ValueError(f"`scales` must be a non-empty list of numbers in [0, {MAX_GUIDANCE_SCALE}]. "
                         f"Received: scales={scales}")
    return [float(w) for w in scales]


def _head(pipeline, k):
    """A pipeline of stages 0..k sharing the models, with its own sampling settings."""
    return CascadedDiffusionPipeline(pipeline.stages[: k + 1], pipeline.sampling[: k + 1])


def _check_levels(levels, maximum):
    levels = list(levels) if isinstance(levels, (list, tuple, range, np.ndarray)) else None
    if not levels or any(not is_int(s) or not 0 <= s <= maximum
                         for s in levels):
        raise ValueError(f"`levels` must be a non-empty list of integers in [0, {maximum}]. Received: levels={levels}")
    return [int(s) for s in levels]


def _check_modes(modes, k):
    allowed = ("non_truncated", "truncated")
    if isinstance(modes, str) or not modes or any(m not in allowed for m in modes):
        raise ValueError(f"`modes` must be a list of values in {list(allowed)}. Received: modes={modes!r}")
    if k == 0:
        raise ValueError("The base stage has no low-resolution input: pass `low_res_images` or an upsampler.")
    return tuple(modes)


def _scores(evaluate, images, metric):
    scores = dict(evaluate(images))
    if metric not in scores:
        raise ValueError(f"`evaluate` must return {metric!r}. Received keys: {sorted(scores)}")
    return {name: float(value) for name, value in scores.items()}


def _finish(result, verbose, plot_path, x, group):
    if verbose:
        print(result.table())
    if plot_path is not None:
        result.plot(plot_path, x=x, group=group)


def _format(value):
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
