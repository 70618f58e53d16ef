"""The step-budget search on the tiny 8 -> 16 -> 32 cascade, with a recording `evaluate`.

Every score is checked against the images the pipeline itself makes for that setting
(sampled again here, without the search's caches), and the ranking of the splits against a
recomputation from the per-stage rows.
"""

import itertools

import numpy as np
import pytest
from PIL import Image

from keras_cdm import CascadedDiffusionPipeline
from keras_cdm.step_budget import search_step_budget
from keras_cdm.testing import RecordingEvaluate as Recorder, tiny_cascade

pytestmark = pytest.mark.backend_neutral

LABELS = [0, 1, 2]


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


def _fresh(cascade, sampling=None):
    return CascadedDiffusionPipeline(cascade.stages, sampling or cascade.sampling)


def _untruncated(cascade):
    return [{**s, "truncated": False} for s in cascade.sampling]


def test_per_stage_rows_score_the_stage_on_the_reference_samples(cascade, tmp_path, capsys):
    pipeline = _fresh(cascade, _untruncated(cascade))
    evaluate = {"sr16": Recorder(), "sr32": Recorder()}
    result = search_step_budget(pipeline, 20, evaluate, LABELS, seed=5, samplers=("ddim", "dpm++2m"),
                                step_counts=(2, 4), max_cascades=3, plot_path=tmp_path / "budget.png")
    names = pipeline.stage_names
    assert list(result.stages) == names
    # The reference: the current settings sampled once.
    _, steps = pipeline.generate(labels=LABELS, seed=5, return_intermediates=True, output="float")
    # The base stage has no evaluate of its own: it is scored at sr16, with sr16 at its current settings.
    assert result.scored_at == {"base": "sr16", "sr16": "sr16", "sr32": "sr32"}
    base_rows = result.stages["base"].rows
    assert [(r["sampler"], r["num_steps"]) for r in base_rows] == [
        ("ancestral", None), ("ddim", 2), ("ddim", 4), ("dpm++2m", "logsnr2"), ("dpm++2m", "logsnr4")]
    assert [r["nfe"] for r in base_rows] == [10, 2, 4, 2, 4]
    assert [r["current"] for r in base_rows] == [True, False, False, False, False]
    head = CascadedDiffusionPipeline(pipeline.stages[:2], pipeline.sampling[:2])
    for row in base_rows[1:]:
        head.set_sampling(0, sampler=row["sampler"], num_steps=row["num_steps"])
        expected = head.generate(labels=LABELS, seed=5)
        assert row["fid"] == pytest.approx(np.abs(expected.astype(float) - 128).mean())
    # sr32 candidates are conditioned on the reference 16x16 samples.
    tail = _fresh(cascade, _untruncated(cascade))
    for row in result.stages["sr32"].rows[1:]:
        tail.set_sampling(2, sampler=row["sampler"], num_steps=row["num_steps"])
        expected = tail.generate(labels=LABELS, seed=5, start_stage=2, low_res_images=steps["sr16"])
        assert row["fid"] == pytest.approx(np.abs(expected.astype(float) - 128).mean())
    assert result.stages["sr32"].rows[0]["fid"] == pytest.approx(
        np.abs(np.round((steps["sr32"] + 1) * 127.5).clip(0, 255) - 128).mean(), abs=0.05)
    out = capsys.readouterr().out
    assert "Splits of 20 network evaluations per image (3 samples)" in out and "reference (current settings)" in out
    assert Image.open(tmp_path / "budget.png").size[0] > 300


def test_splits_fit_the_budget_are_ranked_by_stage_losses_and_equal_an_uncached_run(cascade):
    pipeline = _fresh(cascade, _untruncated(cascade))
    evaluate = Recorder()
    result = search_step_budget(pipeline, 12, evaluate, LABELS, seed=1, samplers=("ddim", "dpm++2m-sde"),
                                step_counts=(2, 4), max_cascades=4, verbose=False)
    names = pipeline.stage_names
    # Independent ranking: every combination of per-stage rows within 12 NFE, by summed relative loss.
    options = []
    for name in names:
        rows = result.stages[name].rows
        best = min(r["fid"] for r in rows)
        options.append([(f"{r['sampler']} {r['num_steps']}", r["nfe"], (r["fid"] - best) / best) for r in rows])
    splits = sorted(((sum(o[2] for o in c), sum(o[1] for o in c), [o[0] for o in c])
                     for c in itertools.product(*options) if sum(o[1] for o in c) <= 12),
                    key=lambda s: (s[0], s[1]))
    assert [[row[n] for n in names] for row in result.cascades.rows] == [s[2] for s in splits[:4]]
    assert all(row["nfe"] <= 12 for row in result.cascades.rows)
    # Each split's score is that of the cascade sampled from scratch with its settings (no cache).
    for row, settings in zip(result.cascades.rows, result.settings):
        images = CascadedDiffusionPipeline(pipeline.stages, settings).generate(labels=LABELS, seed=1)
        assert row["fid"] == pytest.approx(np.abs(images.astype(float) - 128).mean())
    assert result.reference["nfe"] == 10 + 10 + 5
    assert result.best is min(result.cascades.rows, key=lambda r: r["fid"])
    assert pipeline.sampling == _untruncated(cascade)  # untouched without apply_best


def test_apply_best_is_saved_with_the_preset(cascade, tmp_path):
    pipeline = _fresh(cascade, _untruncated(cascade))
    result = search_step_budget(pipeline, 9, Recorder(), LABELS, samplers=("dpm++2m",), step_counts=(2, 3),
                                metric="mean", lower_is_better=False, max_cascades=2, apply_best=True,
                                verbose=False)
    best = result.best
    assert [f"{s['sampler']} {s['num_steps']}" for s in pipeline.sampling] == [best[n] for n in pipeline.stage_names]
    assert sum(p.num_network_evaluations for p in pipeline.plans) == best["nfe"] <= 9
    assert pipeline.sampling[2]["noise_schedule"] == cascade.sampling[2]["noise_schedule"]  # not searched: kept
    pipeline.save_to_preset(tmp_path / "fast", include_weights=False)
    loaded = CascadedDiffusionPipeline.from_preset(tmp_path / "fast", load_weights=False)
    assert loaded.sampling == pipeline.sampling


def test_truncated_augmentation_skips_candidates_that_miss_s_and_samples_splits_exactly(cascade):
    pipeline = _fresh(cascade)  # sr16 truncated at s = 3: the base stage must visit step 2
    result = search_step_budget(pipeline, 30, Recorder(), LABELS, samplers=("ddim",), step_counts=(4, 5, 20),
                                max_cascades=3, verbose=False)
    skipped = {name: [c["num_steps"] for c, _ in result.skipped[name]] for name in result.skipped}
    assert 20 in skipped["base"] and 20 in skipped["sr16"]  # more steps than their 10-step processes
    assert skipped["sr32"] == []  # its 25-step inference schedule has 20 steps to keep
    assert 4 in skipped["base"]  # steps 0, 3, 6, 9: not step 2
    assert all("s=3" in reason for c, reason in result.skipped["base"] if c["num_steps"] == 4)
    for row, settings in zip(result.cascades.rows, result.settings):
        assert settings[1]["truncated"] is True
        images = CascadedDiffusionPipeline(pipeline.stages, settings).generate(labels=LABELS, seed=0)
        assert row["fid"] == pytest.approx(np.abs(images.astype(float) - 128).mean())


def test_given_intermediates_replace_the_reference_run(cascade):
    pipeline = _fresh(cascade, _untruncated(cascade))
    _, steps = pipeline.generate(labels=LABELS, seed=2, return_intermediates=True, output="float")
    a = search_step_budget(pipeline, 25, Recorder(), LABELS, seed=2, samplers=("ddim",), step_counts=(3,),
                           max_cascades=1, verbose=False)
    b = search_step_budget(pipeline, 25, Recorder(), LABELS, seed=2, samplers=("ddim",), step_counts=(3,),
                           max_cascades=1, intermediates=steps, verbose=False)
    assert a.stages["sr32"].rows == b.stages["sr32"].rows and a.reference == b.reference
    with pytest.raises(ValueError, match="intermediates"):
        search_step_budget(pipeline, 25, Recorder(), LABELS, intermediates={"base": steps["base"]}, verbose=False)
    with pytest.raises(ValueError, match="truncated"):
        search_step_budget(_fresh(cascade), 25, Recorder(), LABELS, intermediates=steps, verbose=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, "budget"),
    ({"budget": "40"}, "budget"),
    ({"budget": 3}, "cheapest takes"),
    ({"samplers": ("euler",)}, "samplers"),
    ({"samplers": "ddim"}, "samplers"),
    ({"step_counts": (0,)}, "step_counts"),
    ({"step_counts": ()}, "step_counts"),
    ({"spacings": ("cosine",)}, "spacings"),
    ({"candidates": {"sr64": []}}, "unknown stages"),
    ({"candidates": [{"sampler": "ddim", "steps": 3}]}, "keys"),
    ({"candidates": "ddim"}, "candidates"),
    ({"evaluate": {"base": lambda images: {}}}, "last stage"),
    ({"max_cascades": 0}, "max_cascades"),
])
def test_bad_arguments_are_refused_before_sampling(cascade, kwargs, message):
    evaluate = Recorder()
    arguments = {"budget": 20, "evaluate": evaluate, "samplers": ("ddim",), "step_counts": (2,), **kwargs}
    with pytest.raises(ValueError, match=message):
        search_step_budget(_fresh(cascade, _untruncated(cascade)), labels=LABELS, verbose=False, **arguments)
    assert evaluate.seen == []


def test_guards_pick_the_best_split_no_worse_than_the_current_settings(cascade):
    pipeline = _fresh(cascade, _untruncated(cascade))
    kwargs = dict(budget=12, labels=LABELS, seed=1, samplers=("ddim", "dpm++2m-sde"), step_counts=(2, 4),
                  max_cascades=4, verbose=False)
    free = search_step_budget(pipeline, evaluate=Recorder(), **kwargs)
    evaluate = Recorder()
    guarded = search_step_budget(pipeline, evaluate=evaluate, guards={"mean": "higher"},
                                 stage_rows={n: r.rows for n, r in free.stages.items()}, **kwargs)
    # Phase 1 came from the earlier rows: only the reference samples (as each stage's current row and as the
    # cascade's reference) and the splits were scored, nothing else sampled.
    assert len(evaluate.seen) == 3 + 1 + len(guarded.cascades.rows)
    assert {n: r.rows for n, r in guarded.stages.items()} == {n: r.rows for n, r in free.stages.items()}
    reference = guarded.reference
    for row in guarded.cascades.rows:
        assert row["meets_guards"] == (row["mean"] >= reference["mean"])
    passing = [r for r in guarded.cascades.rows if r["meets_guards"]]
    assert guarded.best is (min(passing, key=lambda r: r["fid"]) if passing else None)
    # Ranking: splits whose stages are no worse than their current setting on the guard come first.
    current = {n: next(r for r in rows.rows if r["current"]) for n, rows in guarded.stages.items()}

    def violations(split_row):
        count = 0
        for name in pipeline.stage_names:
            row = next(r for r in guarded.stages[name].rows if f"{r['sampler']} {r['num_steps']}" == split_row[name])
            count += row["mean"] < current[name]["mean"]
        return count

    counts = [violations(row) for row in guarded.cascades.rows]
    assert counts == sorted(counts)


def test_a_guard_nobody_meets_leaves_the_settings_and_warns(cascade):
    pipeline = _fresh(cascade, _untruncated(cascade))
    before, calls = pipeline.sampling, []

    def evaluate(images):  # "falling" falls with every call: the splits, scored after the reference, are worse
        calls.append(1)
        return {"fid": float(images.mean()), "falling": -float(len(calls))}

    with pytest.warns(UserWarning, match="No split met the guards"):
        result = search_step_budget(pipeline, 12, evaluate, LABELS, samplers=("ddim",), step_counts=(2,),
                                    guards={"falling": "higher"}, max_cascades=2, apply_best=True, verbose=False)
    assert result.best is None and result.best_settings is None
    assert [row["meets_guards"] for row in result.cascades.rows] == [False, False]
    assert pipeline.sampling == before


@pytest.mark.parametrize("kwargs, message", [
    ({"guards": {"recognition": "up"}}, "guards"),
    ({"guards": ["fid"]}, "guards"),
    ({"guard_tolerance": 1.5}, "guard_tolerance"),
    ({"stage_rows": {"base": [{"fid": 1.0}]}}, "stage_rows"),
    ({"guards": {"absent": "higher"}}, "guarded scores"),
])
def test_bad_guards_and_stage_rows_are_refused(cascade, kwargs, message):
    with pytest.raises(ValueError, match=message):
        search_step_budget(_fresh(cascade, _untruncated(cascade)), 20, Recorder(), LABELS, samplers=("ddim",),
                           step_counts=(2,), verbose=False, **kwargs)


def test_candidates_that_sample_the_same_steps_are_measured_once(cascade):
    pipeline = _fresh(cascade, _untruncated(cascade))  # sr32: 5 steps of its 25-step inference schedule
    pipeline.set_sampling("sr32", num_steps=None, noise_schedule={"schedule": "linear", "num_timesteps": 4,
                                                                   "beta_start": 1e-4, "beta_end": 0.5})
    result = search_step_budget(pipeline, 40, Recorder(), LABELS, samplers=("ancestral",), step_counts=(4, 10),
                                max_cascades=1, verbose=False)
    # "4" of a 4-step schedule is the current setting (all its steps): one row, the current one.
    assert [(r["num_steps"], r["current"]) for r in result.stages["sr32"].rows] == [(None, True)]
    assert [c["num_steps"] for c, _ in result.skipped["sr32"]] == [10]
    assert [(r["num_steps"], r["current"]) for r in result.stages["base"].rows] == [
        (None, True), (4, False)]  # 10 of a 10-step process = all steps = the current one
