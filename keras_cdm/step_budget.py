"""The step-budget search: how to split a cascade's network evaluations across its stages.

Sampling costs one network evaluation (NFE) per step of every stage. Given a total budget
of NFE per image, `search_step_budget` looks for the sampler, step spacing and step count
of each stage that make the best cascade within it, in two phases:

1. Per-stage curves: every candidate of every stage is sampled with the other stages at the
   pipeline's current settings (each upsampler conditioned on the earlier stages' samples,
   generated once) and scored at the first stage, from it on, that has an `evaluate`: its
   quality as a function of its own NFE.
2. Splits: every combination of one candidate per stage within the budget is ranked by its
   stages' losses against their best candidates (relative to the best score), and the
   `max_cascades` best ranked are sampled end to end and scored by the last stage's
   `evaluate`; the best of those is the answer. The current settings are scored too, as the
   reference.

The result prints like the other searches (`keras_cdm.search`), plots the curves and the
measured splits, and `apply_best=True` writes the best split into the pipeline's sampling
settings, which `save_to_preset` saves with the cascade.
"""

import dataclasses
import itertools
import warnings
from pathlib import Path

import numpy as np

from keras_cdm._validation import check_positive_int, is_int
from keras_cdm.diffusion import SAMPLERS
from keras_cdm.images import to_uint8
from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.sampling import check_settings
from keras_cdm.search import SearchResult, _format, _intermediates, _scores

SPACINGS = ("uniform", "logsnr", "karras")
"""How `step_counts` become `num_steps`: N (evenly in time), "logsnrN" or "karrasN"."""
_NATURAL_SPACING = {"ancestral": "uniform", "ddim": "uniform"}  # DPM-Solver++: "logsnr"
_MAX_COMBINATIONS = 1_000_000


@dataclasses.dataclass
class StepBudgetResult:
    """What `search_step_budget` measured.

    Attributes:
        budget: the NFE per image allowed.
        stages: {stage name: `SearchResult`} of phase 1 (rows: sampler, num_steps, nfe,
            scores; the current setting is the row with `current=True`).
        cascades: `SearchResult` of the splits sampled end to end (rows: one "sampler
            num_steps" cell per stage, nfe, scores); its `best` is the answer.
        reference: the row of the current settings (scored end to end too).
        skipped: {stage name: [(candidate, reason)]} for candidates the stage cannot sample.
        scored_at: {stage name: the stage whose `evaluate` scored its phase-1 rows}.
    """

    budget: int
    stages: dict
    cascades: SearchResult
    reference: dict
    skipped: dict
    settings: list = dataclasses.field(repr=False, default_factory=list)
    guards: dict = dataclasses.field(default_factory=dict)
    scored_at: dict = dataclasses.field(default_factory=dict)

    @property
    def best(self):
        """The best measured split within the budget (a row of `cascades`) among those that
        meet the guards; None when none does."""
        rows = [r for r in self.cascades.rows if r.get("meets_guards", True)]
        if not rows:
            return None
        pick = min if self.cascades.lower_is_better else max
        return pick(rows, key=lambda row: row[self.cascades.metric])

    @property
    def best_settings(self):
        """The sampling settings (one dict per stage) of `best` (None without one)."""
        return None if self.best is None else self.settings[self.cascades.rows.index(self.best)]

    def table(self):
        lines = [self.stages[name].table() for name in self.stages]
        lines.append(self.cascades.table())
        ref = self.reference
        lines.append("reference (current settings): " + "  ".join(f"{k}={_format(v)}" for k, v in ref.items()))
        if self.guards:
            best = self.best
            lines.append(f"best meeting the guards {self.guards}: " + (
                "none" if best is None else "  ".join(f"{k}={_format(v)}" for k, v in best.items())))
        return "\n\n".join(lines)

    def plot(self, path):
        """Saves one panel per stage (metric vs the stage's NFE, one line per sampler and
        spacing; the current setting starred) and one of the measured splits (metric vs
        total NFE, the budget dashed, the reference starred, splits that fail the guards
        crossed), as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        metric = self.cascades.metric
        panels = len(self.stages) + 1
        figure, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4), dpi=100, squeeze=False)
        for axis, (name, result) in zip(axes[0], self.stages.items()):
            lines = {}
            for row in result.rows:
                if not row["current"]:
                    lines.setdefault(f"{row['sampler']} {_spacing(row['num_steps'])}", []).append(row)
            for label, rows in lines.items():
                rows = sorted(rows, key=lambda r: r["nfe"])
                axis.plot([r["nfe"] for r in rows], [r[metric] for r in rows], marker="o", label=label)
            for row in result.rows:
                if row["current"]:
                    axis.plot(row["nfe"], row[metric], marker="*", markersize=12, color="k", linestyle="none",
                              label="current")
            axis.set_title(f"{name}: {result.title.split(' (')[1].rstrip(')')}", fontsize=8)
            axis.set_xlabel(f"network evaluations of {name}")
            axis.set_ylabel(f"{metric} ({self.scored_at.get(name, name)})")
            axis.set_xscale("log")  # labelled at the NFEs measured, without log-scale minor labels
            axis.set_xticks(sorted({row["nfe"] for row in result.rows}))
            axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            axis.legend(fontsize=6)
        axis = axes[0][-1]
        for meets, style in ((True, dict(label="splits measured")),
                             (False, dict(marker="x", color="grey", label="fail the guards"))):
            rows = [r for r in self.cascades.rows if r.get("meets_guards", True) == meets]
            if rows:
                axis.scatter([r["nfe"] for r in rows], [r[metric] for r in rows], **style)
        best = self.best
        if best is not None:
            axis.scatter([best["nfe"]], [best[metric]], marker="o", s=120, facecolors="none", edgecolors="r",
                         label="best")
        axis.plot(self.reference["nfe"], self.reference[metric], marker="*", markersize=12, color="k",
                  linestyle="none", label="current settings")
        axis.axvline(self.budget, linestyle="--", color="grey", label=f"budget {self.budget}")
        axis.set_xlabel("network evaluations per image (cascade)")
        axis.set_ylabel(f"{metric} (cascade)")
        axis.set_title("Whole cascade", fontsize=8)
        axis.legend(fontsize=6)
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        plt.close(figure)
        return Path(path)


def search_step_budget(pipeline, budget, evaluate, labels, seed=0, samplers=("ancestral", "ddim", "dpm++2m",
                       "dpm++2m-sde"), step_counts=(5, 10, 20), spacings=None, candidates=None, max_cascades=4,
                       intermediates=None, metric="fid", lower_is_better=True, guards=None, guard_tolerance=0.0,
                       stage_rows=None, batch_size=16, plot_path=None, apply_best=False, verbose=True):
    """Finds the split of `budget` network evaluations per image across the stages.

    Args:
        pipeline: a `CascadedDiffusionPipeline`; its current settings are the reference,
            and everything not searched (augmentation level and mode, eta, clipping,
            inference noise schedules) stays as they set it.
        budget: the total network evaluations per image of the cascade.
        evaluate: `evaluate(uint8 images) -> dict` with `metric`, for the cascade's
            output; or a dict from stage name to such a callable (at least the last
            stage), so that phase 1 scores a stage at its own size instead of running the
            later stages.
        labels: the class labels of the samples (their number is the sample count).
        samplers, step_counts, spacings: the candidate grid of every stage: each sampler
            with each spacing in `SPACINGS` and each step count. `spacings=None` gives each
            sampler its natural spacing ("uniform" for "ancestral" and "ddim", "logsnr" for
            DPM-Solver++).
        candidates: instead of the grid, a list of settings dicts for every stage, or a
            dict from stage name to such a list (e.g. `{"sampler": "ddim", "num_steps": 10,
            "eta": 1.0}` or a shorter `noise_schedule`).
        max_cascades: how many splits to sample end to end.
        intermediates: the per-stage samples of `labels` at the current settings (from
            `pipeline.generate(..., return_intermediates=True)`; no truncated stage), to
            skip generating them again.
        guards: other scores a split must not make worse than the current settings, as
            {score name: "higher" or "lower" (which is better)}, e.g. `{"recognition":
            "higher"}`: the best split is the best by `metric` among those no worse on
            every guard (None when none is). In the ranking of phase 2, candidates worse
            than their stage's current setting on a guard come after all others.
        guard_tolerance: relative slack of the guards (0.01: up to 1 % worse still counts
            as no worse), for scores whose sampling noise is known.
        stage_rows: `{stage name: rows}` of an earlier search of the same pipeline,
            labels and seed (`{name: r.rows for name, r in result.stages.items()}`, JSON
            safe): candidates found there are not sampled again, so another budget or
            other guards cost only phase 2.
        plot_path: where to save the plot (PNG).
        apply_best: write the best split into the pipeline's sampling settings.

    Returns a `StepBudgetResult`.
    """
    budget = check_positive_int("budget", budget)
    max_cascades = check_positive_int("max_cascades", max_cascades)
    names = pipeline.stage_names
    guards = _check_guards(guards, guard_tolerance)
    known = _check_stage_rows(stage_rows, names)
    evaluators = _check_evaluate(evaluate, names)
    per_stage = _candidates(pipeline, candidates, samplers, step_counts, spacings)
    # Each candidate is checked against the cascade (its process, the truncation of the next stage) and priced.
    feasible, skipped = {}, {}
    for k, name in enumerate(names):
        feasible[name], skipped[name] = [], []
        seen = set()
        for candidate in [_current(pipeline, k)] + per_stage[name]:
            try:
                plan = _trial(pipeline, {k: candidate}).plans[k]
            except ValueError as error:
                skipped[name].append((candidate, str(error)))
                if verbose:
                    print(f"{name}: skipped {_label(candidate)}: {error}")
                continue
            # One row per distinct sampling: "logsnr10" of a 10-step process is all of its steps.
            same = (plan.sampler, plan.process.timestep_map.tobytes(), plan.eta, plan.clip_denoised,
                    repr(plan.noise_schedule), plan.stop_step)
            if same not in seen:
                seen.add(same)
                feasible[name].append((candidate, plan.num_network_evaluations))
    floor = sum(min(nfe for _, nfe in feasible[name]) for name in names)
    if floor > budget:
        raise ValueError(f"No split of the candidates fits a budget of {budget} network evaluations per image: the "
                         f"cheapest takes {floor}. Received: budget={budget}")
    reference_samples = _reference(pipeline, labels, seed, batch_size, intermediates)

    # Phase 1: each stage's candidates, the other stages at their current settings.
    stages, scored = {}, {}
    for k, name in enumerate(names):
        scored_at = next(j for j in range(k, len(names)) if names[j] in evaluators)
        head = CascadedDiffusionPipeline(pipeline.stages[: scored_at + 1], _untruncated(pipeline)[: scored_at + 1])
        rows = []
        for index, (candidate, nfe) in enumerate(feasible[name]):
            previous = known.get(name, {}).get(_label(candidate))
            if previous is not None and index > 0:  # measured by an earlier search
                rows.append({**previous, "nfe": nfe, "current": False})
                continue
            if index == 0:  # the current setting: the reference samples are its samples
                images = to_uint8(reference_samples[names[scored_at]])
            else:
                head.set_sampling(k, **{**pipeline.plans[k].settings, **candidate, "truncated": False})
                images = _sample(head, labels, seed, batch_size, k, reference_samples)
            rows.append({"sampler": candidate["sampler"], "num_steps": candidate["num_steps"], "nfe": nfe,
                         "current": index == 0, **_scores(evaluators[names[scored_at]], images, metric)})
            if verbose:
                print(f"{name}: " + "  ".join(f"{m}={_format(v)}" for m, v in rows[-1].items()))
        stages[name] = SearchResult(f"Steps of {name} (scored at {names[scored_at]}, {len(labels)} samples)",
                                    ["sampler", "num_steps", "nfe", "current"], rows, metric, lower_is_better)
        scored[name] = names[scored_at]

    missing = sorted({g for result in stages.values() for row in result.rows for g in guards if g not in row})
    if missing:
        raise ValueError(f"`evaluate` must return the guarded scores {missing}. Received: guards={guards!r}")

    # Phase 2: the best-ranked splits within the budget, sampled end to end.
    ranked = _rank(stages, feasible, budget, lower_is_better, metric, guards, guard_tolerance)
    last = evaluators[names[-1]]
    reference_images = to_uint8(reference_samples[names[-1]]) if not any(p.truncated for p in pipeline.plans) \
        else pipeline.generate(labels=labels, seed=seed, batch_size=batch_size, verbose=False)
    reference = {**{name: _label(_current(pipeline, k)) for k, name in enumerate(names)},
                 "nfe": sum(p.num_network_evaluations for p in pipeline.plans),
                 **_scores(last, reference_images, metric)}
    rows, settings, cache = [], [], {}
    for split in ranked[:max_cascades]:
        trial = _trial(pipeline, dict(enumerate(c for c, _ in split)))
        images = _sample_split(trial, split, labels, seed, batch_size, cache)
        rows.append({**{name: _label(c) for name, (c, _) in zip(names, split)},
                     "nfe": sum(n for _, n in split), **_scores(last, images, metric)})
        if guards:
            rows[-1]["meets_guards"] = not _violations(rows[-1], reference, guards, guard_tolerance)
        settings.append(trial.sampling)
        if verbose:
            print("cascade: " + "  ".join(f"{m}={_format(v)}" for m, v in rows[-1].items()))
    cascades = SearchResult(f"Splits of {budget} network evaluations per image ({len(labels)} samples)",
                            names + ["nfe"], rows, metric, lower_is_better)
    result = StepBudgetResult(budget, stages, cascades, reference, skipped, settings, guards, scored)
    if verbose:
        print(result.table())
    if plot_path is not None:
        result.plot(plot_path)
    if apply_best and result.best is None:
        warnings.warn(f"No split met the guards {guards}: the pipeline's settings are left as they were.",
                      stacklevel=2)
    elif apply_best:
        for k, chosen in enumerate(result.best_settings):  # each step is a split whose candidates were checked
            pipeline.set_sampling(k, **chosen)
    return result


def _check_evaluate(evaluate, names):
    if callable(evaluate):
        return {names[-1]: evaluate}
    if not isinstance(evaluate, dict) or names[-1] not in evaluate or not set(evaluate) <= set(names) \
            or not all(callable(f) for f in evaluate.values()):
        raise ValueError(f"`evaluate` must be a callable or a dict from stage names {names} to callables that "
                         f"includes the last stage {names[-1]!r}. Received: {evaluate!r}")
    return dict(evaluate)


def _candidates(pipeline, candidates, samplers, step_counts, spacings):
    """{stage name: [settings dict]} of the grid, or of the given `candidates`."""
    names = pipeline.stage_names
    if candidates is not None:
        given = candidates if isinstance(candidates, dict) else {name: candidates for name in names}
        unknown = set(given) - set(names) if isinstance(given, dict) else None
        if unknown:
            raise ValueError(f"`candidates` has unknown stages {sorted(unknown)}; stages: {names}")
        result = {}
        for name in names:
            chosen = given.get(name, [])
            if not isinstance(chosen, (list, tuple)) or not all(isinstance(c, dict) for c in chosen):
                raise ValueError(f"`candidates` must be a list of sampling-settings dicts (or a dict of such lists "
                                 f"per stage). Received for {name!r}: {chosen!r}")
            result[name] = [_complete(check_settings(dict(c)), pipeline, names.index(name)) for c in chosen]
        return result
    if isinstance(samplers, str) or not samplers or any(s not in SAMPLERS for s in samplers):
        raise ValueError(f"`samplers` must be a non-empty list of values in {list(SAMPLERS)}. "
                         f"Received: samplers={samplers!r}")
    if isinstance(step_counts, str) or not step_counts or any(not is_int(n) or n < 1 for n in step_counts):
        raise ValueError(f"`step_counts` must be a non-empty list of positive integers. "
                         f"Received: step_counts={step_counts!r}")
    if spacings is not None and (isinstance(spacings, str) or not spacings or any(s not in SPACINGS
                                                                                  for s in spacings)):
        raise ValueError(f"`spacings` must be None or a non-empty list of values in {list(SPACINGS)}. "
                         f"Received: spacings={spacings!r}")
    grid = []
    for sampler in samplers:
        for spacing in spacings or (_NATURAL_SPACING.get(sampler, "logsnr"),):
            for n in step_counts:
                grid.append({"sampler": sampler, "num_steps": int(n) if spacing == "uniform" else f"{spacing}{n}"})
    return {name: grid for name in names}


def _complete(candidate, pipeline, k):
    """A candidate with the sampler and step count it runs (the current ones where it names none)."""
    current = pipeline.plans[k]
    return {"sampler": current.sampler, "num_steps": current.num_steps, **candidate}


def _current(pipeline, k):
    plan = pipeline.plans[k]
    return {"sampler": plan.sampler, "num_steps": plan.num_steps}


def _label(candidate):
    """'sampler num_steps' plus any other setting the candidate changes."""
    extra = {k: v for k, v in candidate.items() if k not in ("sampler", "num_steps")}
    text = f"{candidate['sampler']} {candidate['num_steps']}"
    return text + (" " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")


def _spacing(num_steps):
    if isinstance(num_steps, str):
        return num_steps.rstrip("0123456789") or "uniform"
    return "uniform" if is_int(num_steps) else "all steps"


def _trial(pipeline, changes):
    """A pipeline over the same stages with `changes` ({stage index: settings}) applied."""
    sampling = pipeline.sampling
    for k, settings in changes.items():
        sampling[k] = {**sampling[k], **settings}
    return CascadedDiffusionPipeline(pipeline.stages, sampling)


def _untruncated(pipeline):
    """The current settings with every stage's augmentation non-truncated (phase 1 hands
    each upsampler the previous stage's final samples)."""
    return [{**settings, "truncated": False} for settings in pipeline.sampling]


def _reference(pipeline, labels, seed, batch_size, intermediates):
    """Every stage's samples at the current settings (non-truncated), floats or uint8."""
    names = pipeline.stage_names
    if intermediates is not None:
        if any(p.truncated for p in pipeline.plans):
            raise ValueError("`intermediates` hold a truncated stage's z_s, not its samples; pass "
                             "intermediates=None for a cascade with truncated augmentation.")
        return _intermediates(pipeline, range(1, len(names)), labels, intermediates)
    full = CascadedDiffusionPipeline(pipeline.stages, _untruncated(pipeline))
    return full.generate(labels=labels, seed=seed, batch_size=batch_size, return_intermediates=True,
                         output="float", verbose=False)[1]


def _sample(head, labels, seed, batch_size, k, reference_samples):
    """`head` sampled from stage k on, conditioned on the reference samples of stage k - 1."""
    if k == 0:
        return head.generate(labels=labels, seed=seed, batch_size=batch_size, verbose=False)
    low = np.asarray(reference_samples[head.stage_names[k - 1]])
    return head.generate(labels=labels, seed=seed, batch_size=batch_size, start_stage=k, low_res_images=low,
                         verbose=False)


def _rank(stages, feasible, budget, lower_is_better, metric, guards, tolerance):
    """The splits within `budget`, best first: fewest candidates worse than their stage's
    current setting on a guard, then the smallest sum of the stages' relative losses in
    phase 1, then the fewest NFE."""
    losses = []
    for name, result in stages.items():
        scores = np.array([row[metric] for row in result.rows], dtype=np.float64)
        best = scores.min() if lower_is_better else scores.max()
        current = next(row for row in result.rows if row["current"])
        violations = np.array([_violations(row, current, guards, tolerance) for row in result.rows])
        losses.append(violations * 1e9 + np.abs(scores - best) / max(abs(best), 1e-12))
    options = [list(zip(feasible[name], loss)) for name, loss in zip(stages, losses)]
    count = int(np.prod([len(o) for o in options], dtype=np.float64))
    if count > _MAX_COMBINATIONS:
        raise ValueError(f"{count} splits to rank (more than {_MAX_COMBINATIONS}): pass fewer candidates.")
    splits = []
    for combination in itertools.product(*options):
        nfe = sum(n for (_, n), _ in combination)
        if nfe <= budget:
            splits.append((sum(loss for _, loss in combination), nfe, [c for c, _ in combination]))
    splits.sort(key=lambda s: (s[0], s[1]))
    return [split for _, _, split in splits]


def _violations(row, reference, guards, tolerance):
    """How many guards `row` is worse on than `reference`, beyond the relative tolerance."""
    count = 0
    for name, better in guards.items():
        slack = tolerance * abs(reference[name])
        count += row[name] < reference[name] - slack if better == "higher" else row[name] > reference[name] + slack
    return int(count)


def _check_guards(guards, tolerance):
    if guards is None:
        guards = {}
    if not isinstance(guards, dict) or any(not isinstance(k, str) or v not in ("higher", "lower")
                                           for k, v in guards.items()):
        raise ValueError('`guards` must be None or a dict from score names to "higher" or "lower". '
                         f"Received: guards={guards!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"`guard_tolerance` must be a number in [0, 1). Received: guard_tolerance={tolerance!r}")
    return dict(guards)


def _check_stage_rows(stage_rows, names):
    """{stage name: {candidate label: row}} of an earlier search."""
    if stage_rows is None:
        return {}
    if not isinstance(stage_rows, dict) or not set(stage_rows) <= set(names) or not all(
            isinstance(rows, (list, tuple)) and all(isinstance(r, dict) and {"sampler", "num_steps"} <= set(r)
                                                    for r in rows) for rows in stage_rows.values()):
        raise ValueError(f"`stage_rows` must be a dict from stage names {names} to the rows of an earlier search "
                         f"(dicts with 'sampler' and 'num_steps'). Received: {stage_rows!r}")
    return {name: {_label({"sampler": r["sampler"], "num_steps": r["num_steps"]}): dict(r) for r in rows}
            for name, rows in stage_rows.items()}


def _sample_split(trial, split, labels, seed, batch_size, cache):
    """The cascade's output for a split, reusing the earlier stages' samples of splits
    that share them (where the next stage is not truncated, whose input depends on it)."""
    names, keys = trial.stage_names, [_label(c) for c, _ in split]
    start, low = 0, None
    for j in range(len(names) - 2, -1, -1):
        key = tuple(keys[: j + 1])
        if key in cache and not trial.plans[j + 1].truncated:
            start, low = j + 1, cache[key]
            break
    if start == 0:
        images, steps = trial.generate(labels=labels, seed=seed, batch_size=batch_size, output="float",
                                       return_intermediates=True, verbose=False)
    else:
        images, steps = trial.generate(labels=labels, seed=seed, batch_size=batch_size, output="float",
                                       start_stage=start, low_res_images=low, return_intermediates=True,
                                       verbose=False)
    for j in range(start, len(names) - 1):
        if not trial.plans[j + 1].truncated:
            cache[tuple(keys[: j + 1])] = steps[names[j]]
    return to_uint8(images)
