"""Measures the trained `cdm_mnist32` cascade (issue 7); writes tables, plots and pictures.

    python scripts/evaluate_cdm_mnist32.py                        # everything, into docs/cdm_mnist32/
    python scripts/evaluate_cdm_mnist32.py --only quality table3  # some parts

Parts (each merges its numbers into <out>/results.json and prints a Markdown table):
  quality   domain FID of --num-samples cascade samples against the held-out and the
            training digits (features of a classifier trained on the real training
            split), label accuracy of the samples, and the Classification Accuracy
            Score (a classifier trained on generated digits only, tested on the
            held-out real digits) next to the same classifier trained on real digits
  baseline  every super-resolution stage vs a bicubic resize of its own inputs (the same
            samples): domain FID, near-black fraction, pixel-histogram distance to the
            real digits (keras_cdm.search.baseline_comparison), with plots
  recognition  label accuracy of the 32x32 outputs, of the 16x16 outputs resized bicubically,
            and of real held-out digits, by two judges trained on real digits: the CNN of
            the domain FID and a pixel-level classifier (evaluation.pixel_classifier)
  table3    the paper's Table 3a/3b for the 8->16 stage: FID at 16x16 over the
            augmentation level s, truncated and non-truncated, conditioned on
            generated 8x8 samples and on real downsampled held-out digits
  blur      the 16->32 stage trained with and without blur augmentation (the second
            from --noblur-stage), both fed the same generated 16x16 samples
  steps     the 16->32 stage sampled with 4, 10, 25 and 100 steps (Figure 8): for each
            count the best linear inference schedule of a small grid
  mismatch  Table 3a with a real train/test mismatch: the base stage sampled with few
            steps (--mismatch-base-steps, e.g. ddim5), the 8->16 stage swept over s in both modes
  budget    the step-budget search (keras_cdm.step_budget): FID-vs-NFE curves of every stage
            for ancestral, DDIM and DPM-Solver++ samplers, then the best splits of --budget
            network evaluations per image sampled end to end, next to the preset's settings;
            judged by domain FID, the pixel histogram and the pixel classifier's recognition
  pictures  the 10x10 grid, one seed through every stage, and stage vs bicubic resize
"""

import argparse
import json
import time
import zlib
from pathlib import Path

import keras
import numpy as np

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, save_image_grid
from keras_cdm.data import mnist_subset, resize_images
from keras_cdm.images import from_uint8
from keras_cdm.evaluation import (ClassifierFeatures, classification_accuracy_score, compute_statistics,
                                  default_cas_classifier, fid, histogram_distance, pixel_classifier,
                                  pixel_statistics, recognition_accuracy)
from keras_cdm.precision_recall import precision_recall
from keras_cdm.step_budget import search_step_budget
from keras_cdm.search import (baseline_comparison, sample_quality, search_augmentation_level, search_guidance_scale,
                              search_noise_schedule, stage_beats_baseline)

PARTS = ("quality", "baseline", "recognition", "table3", "mismatch", "blur", "steps", "budget", "guidance", "pictures")
LEVELS = (0, 41, 101, 201, 301, 481)  # s - 1 on the base stage's ddim50 grid (stride 20), so truncation works
CLASSIFIERS = {"cnn": default_cas_classifier, "pixel": pixel_classifier}
# candidate linear inference schedules (beta from 1e-4 to beta_end, posterior variances) per number of steps
BETA_ENDS = {4: (0.5, 0.9), 10: (0.3, 0.6, 0.9), 25: (0.1, 0.3, 0.6), 100: (0.05, 0.2)}


def real_digits(split, size):
    images, labels = mnist_subset(split)
    return np.asarray(resize_images(from_uint8(images), size)), labels


def domain_classifier(size, out, seed=0, kind="cnn"):
    """A classifier trained on the real training digits at `size` (cached in `out`):
    "cnn" (`default_cas_classifier`, the feature extractor of the domain FID) or "pixel"
    (`pixel_classifier`); returns (model, held-out accuracy)."""
    path = Path(out) / f"classifier_{size}{'' if kind == 'cnn' else '_' + kind}.weights.h5"
    keras.utils.set_random_seed(seed)
    model = CLASSIFIERS[kind]((size, size, 1), 10)
    if path.exists():
        model.load_weights(path)
    else:
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(*real_digits("train", size), batch_size=64, epochs=15, verbose=0)
        model.save_weights(path)
    xh, yh = real_digits("heldout", size)
    accuracy = float((np.argmax(model.predict(xh, verbose=0), 1) == yh).mean())
    return model, accuracy


class Context:
    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pipeline = CascadedDiffusionPipeline.from_preset(args.preset)
        self.results_path = self.out / "results.json"
        self._classifiers, self._references = {}, {}

    def classifier(self, size, kind="cnn"):
        if (size, kind) not in self._classifiers:
            self._classifiers[size, kind] = domain_classifier(size, self.out, kind=kind)
            name = f"classifier_{size}{'' if kind == 'cnn' else '_' + kind}_heldout_accuracy"
            self.save({name: self._classifiers[size, kind][1]})
        return self._classifiers[size, kind][0]

    def reference(self, split, size):
        """Feature statistics of the real digits of `split` (computed once per split and size)."""
        if (split, size) not in self._references:
            self._references[split, size] = compute_statistics(real_digits(split, size)[0],
                                                               ClassifierFeatures(self.classifier(size)))
        return self._references[split, size]

    def evaluate(self, size):
        return sample_quality(ClassifierFeatures(self.classifier(size)), self.reference("train", size),
                              inception_score=False, batch_size=250)

    def save(self, values):
        results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        results.update(values)
        self.results_path.write_text(json.dumps(results, indent=1, default=float))

    def samples(self):
        """The --num-samples cascade samples (balanced labels) and every stage's output
        ({stage name: images}, floats in [-1, 1]), generated once and kept while the
        preset's weights and sampling settings, the seed and the count stay the same."""
        path, names = self.out / "samples.npz", self.pipeline.stage_names
        fingerprint = np.array([float(sum(np.abs(keras.ops.convert_to_numpy(w)).sum() for w in stage.weights))
                                for stage in self.pipeline.stages] + [self.args.seed, self.args.num_samples] + [
                                zlib.crc32(json.dumps(self.pipeline.sampling, sort_keys=True).encode())])
        if not path.exists() or not np.array_equal(np.load(path).get("fingerprint"), fingerprint):
            labels = np.arange(self.args.num_samples) % 10
            start = time.time()
            _, steps = self.pipeline.generate(labels=labels, seed=self.args.seed, batch_size=250,
                                              return_intermediates=True, output="float", verbose=True)
            np.savez_compressed(path, labels=labels, fingerprint=fingerprint, **{f"stage_{n}": steps[n] for n in names})
            self.save({"sampling_seconds": round(time.time() - start, 1),
                       "sampling_seconds_per_stage": {k: round(v, 1) for k, v in self.pipeline.last_timings.items()}})
        data = np.load(path)
        return data["labels"], {n: data[f"stage_{n}"] for n in names}


def part_quality(ctx):
    labels, steps = ctx.samples()
    images = steps[ctx.pipeline.stage_names[-1]]
    extractor = ClassifierFeatures(ctx.classifier(32))
    generated = compute_statistics(images, extractor, batch_size=250)
    held, train = ctx.reference("heldout", 32), ctx.reference("train", 32)
    x_train, y_train = real_digits("train", 32)
    x_held, y_held = real_digits("heldout", 32)
    predicted = np.argmax(ctx.classifier(32).predict(images, batch_size=250, verbose=0), 1)
    cas = classification_accuracy_score(images, labels, x_held, y_held, 10, seed=1)
    real = classification_accuracy_score(x_train, y_train, x_held, y_held, 10, seed=1)
    results = {
        "num_samples": len(images),
        "fid_vs_heldout": fid(held, generated), "fid_vs_train": fid(train, generated),
        "fid_train_vs_heldout": fid(train, held),
        "sample_label_accuracy": float((predicted == labels).mean()),
        "cas_top1": cas["top1"], "cas_top5": cas["top5"],
        "real_classifier_top1": real["top1"], "real_classifier_top5": real["top5"],
    }
    ctx.save({"quality": results})
    print("\n| measure | value |\n| --- | --- |")
    for key, value in results.items():
        print(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")


def part_baseline(ctx):
    labels, steps = ctx.samples()
    sizes = {name: stage.unet.image_size for name, stage in zip(ctx.pipeline.stage_names, ctx.pipeline.stages)}
    upsamplers = ctx.pipeline.stage_names[1:]
    real = {name: real_digits("train", sizes[name])[0] for name in upsamplers}
    result = baseline_comparison(ctx.pipeline, {name: ctx.evaluate(sizes[name]) for name in upsamplers}, labels,
                                 real, intermediates=steps, plot_path=ctx.out / "baseline.png",
                                 histogram_path=ctx.out / "baseline_histograms.png")
    verdicts = stage_beats_baseline(result)
    real_black = {name: pixel_statistics(real[name])["near_black"] for name in upsamplers}
    ctx.save({"baseline": {"samples": len(labels), "rows": result.rows, "beats_bicubic": verdicts,
                           "real_near_black": real_black}})
    print("\n| stage | images | domain FID (vs training digits) | near-black (real: see stage) "
          "| histogram distance to the real digits |\n| --- | --- | ---: | ---: | ---: |")
    for row in result.rows:
        print(f"| {row['stage']} | {row['images']} | {row['fid']:.1f} | {100 * row['near_black']:.1f} % "
              f"(real {100 * real_black[row['stage']]:.1f} %) | {row['histogram_distance']:.4f} |")
    print(f"beats the bicubic resize (FID and histogram distance): {verdicts}")


def part_recognition(ctx):
    labels, steps = ctx.samples()
    names = ctx.pipeline.stage_names
    bicubic = keras.ops.convert_to_numpy(keras.ops.image.resize(steps[names[-2]], (32, 32), interpolation="bicubic"))
    x_held, y_held = real_digits("heldout", 32)
    sets = {"real held-out digits": (x_held, y_held), f"{names[-1]} outputs (32x32)": (steps[names[-1]], labels),
            f"{names[-2]} outputs, bicubic to 32x32": (np.clip(bicubic, -1, 1), labels)}
    results = {}
    for name, (images, truth) in sets.items():
        results[name] = {"near_black": pixel_statistics(images)["near_black"]}
        for kind in CLASSIFIERS:
            accuracy = recognition_accuracy(ctx.classifier(32, kind), images, truth, 10)
            results[name][kind] = accuracy["top1"]
            results[name][f"{kind}_per_class"] = accuracy["per_class_top1"].tolist()
    ctx.save({"recognition": results})
    print("\n| 32x32 images | CNN recognises | pixel classifier recognises | lowest class (pixel) | near-black |"
          "\n| --- | ---: | ---: | ---: | ---: |")
    for name, row in results.items():
        low = int(np.argmin(row["pixel_per_class"]))
        print(f"| {name} | {100 * row['cnn']:.1f} % | {100 * row['pixel']:.1f} % | "
              f"{low}: {100 * row['pixel_per_class'][low]:.1f} % | {100 * row['near_black']:.1f} % |")


def part_table3(ctx):
    """FID at 16x16 against the training digits; conditioned on real held-out digits, also
    against the held-out digits themselves (their own distribution: the fair reference there)."""
    n = ctx.args.table3_samples
    real16, labels = real_digits("heldout", 16)
    pick = np.concatenate([np.flatnonzero(labels == c)[: n // 10] for c in range(10)])
    real16, labels = real16[pick], labels[pick]
    sr16 = ctx.pipeline.stages[1]
    low8 = np.asarray(keras.ops.convert_to_numpy(sr16.downsample(real16)))
    extractor = ClassifierFeatures(ctx.classifier(16))
    train, held = ctx.reference("train", 16), compute_statistics(real16, extractor)

    def evaluate(images):
        stats = compute_statistics(images, extractor, batch_size=250)
        return {"fid": fid(train, stats), "fid_heldout": fid(held, stats)}

    previous = json.loads(ctx.results_path.read_text()).get("table3", {}) if ctx.results_path.exists() else {}
    table = {"samples": len(labels), "real_heldout_vs_train_fid": fid(train, held), **previous}
    if "generated" in ctx.args.table3_inputs:
        table["generated"] = search_augmentation_level(
            ctx.pipeline, 1, LEVELS, evaluate, labels, seed=ctx.args.seed, batch_size=250,
            plot_path=ctx.out / "table3a_generated.png").rows
    if "real" in ctx.args.table3_inputs:
        table["real"] = search_augmentation_level(
            ctx.pipeline, 1, LEVELS, evaluate, labels, seed=ctx.args.seed, low_res_images=low8, batch_size=250,
            plot_path=ctx.out / "table3b_real.png").rows
    ctx.save({"table3": table})
    rows = {(r["mode"], r["s"]): r for r in table.get("generated", []) + table.get("real", [])}
    cell = lambda key, metric: f"{rows[key][metric]:.2f}" if key in rows and metric in rows[key] else "-"  # noqa: E731
    print(f"\nFID at 16x16, {len(labels)} samples (real held-out digits vs training digits: "
          f"{table['real_heldout_vs_train_fid']:.2f})\n")
    print("| s | generated 8x8, non-truncated | generated 8x8, truncated | real 8x8 (vs training) "
          "| real 8x8 (vs held-out) |\n| --- | --- | --- | --- | --- |")
    for s in LEVELS:
        print(f"| {s} | {cell(('non_truncated', s), 'fid')} | {cell(('truncated', s), 'fid')} | "
              f"{cell(('ground_truth', s), 'fid')} | {cell(('ground_truth', s), 'fid_heldout')} |")


def part_mismatch(ctx):
    """Table 3a where the generated inputs differ from the real ones: the base stage sampled
    with --mismatch-base-steps steps; its 8x8 samples' FID shows the mismatch."""
    n, steps = ctx.args.table3_samples, ctx.args.mismatch_base_steps
    labels = np.arange(n) % 10
    pipeline = CascadedDiffusionPipeline(ctx.pipeline.stages, ctx.pipeline.sampling)
    base = {}
    for setting in (ctx.pipeline.plans[0].num_steps, steps):
        pipeline.set_sampling(0, num_steps=setting)
        head = CascadedDiffusionPipeline(pipeline.stages[:1], pipeline.sampling[:1])
        low8 = head.generate(labels=labels, seed=ctx.args.seed, batch_size=250, verbose=False)
        base[str(setting)] = {"fid_8x8": ctx.evaluate(8)(low8)["fid"],
                              "near_black_8x8": pixel_statistics(low8)["near_black"]}
    real8 = real_digits("heldout", 8)[0]
    base["real held-out"] = {"fid_8x8": fid(ctx.reference("train", 8),
                                            compute_statistics(real8, ClassifierFeatures(ctx.classifier(8)))),
                             "near_black_8x8": pixel_statistics(real8)["near_black"]}
    # s = 0 and every s of the training range whose z_s the few-step base visits (s - 1 on its
    # grid), so both modes can run
    maximum = pipeline.stages[1].augmentation.max_level
    levels = [0] + [int(t) + 1 for t in pipeline.plans[0].process.timestep_map if int(t) + 1 <= maximum]
    result = search_augmentation_level(pipeline, 1, levels, ctx.evaluate(16), labels, seed=ctx.args.seed,
                                       batch_size=250, plot_path=ctx.out / f"table3a_mismatch_{steps}.png")
    ctx.save({f"mismatch_{steps}": {"samples": n, "base_num_steps": steps, "base": base, "rows": result.rows}})
    print("\n| base stage sampling | FID at 8x8 (vs training digits) | near-black |\n| --- | ---: | ---: |")
    for name, row in base.items():
        print(f"| {name} | {row['fid_8x8']:.2f} | {100 * row['near_black_8x8']:.1f} % |")
    rows = {(r["mode"], r["s"]): r["fid"] for r in result.rows}
    print("\n| s | non-truncated | truncated |\n| ---: | ---: | ---: |")
    for s in levels:
        print(f"| {s} | {rows['non_truncated', s]:.2f} | {rows['truncated', s]:.2f} |")


def _sr32_fid(ctx, pipeline, low16, labels):
    images = pipeline.generate(labels=labels, seed=ctx.args.seed, batch_size=250, start_stage=2,
                               low_res_images=low16, verbose=False)
    return ctx.evaluate(32)(images)["fid"]


def part_blur(ctx):
    labels, steps = ctx.samples()
    low16 = steps[ctx.pipeline.stage_names[-2]]
    n = ctx.args.ablation_samples
    noblur = DiffusionModel.from_preset(ctx.args.noblur_stage)
    variant = CascadedDiffusionPipeline(ctx.pipeline.stages[:2] + [noblur], ctx.pipeline.sampling)
    results = {"samples": n, "with_blur": _sr32_fid(ctx, ctx.pipeline, low16[:n], labels[:n]),
               "without_blur": _sr32_fid(ctx, variant, low16[:n], labels[:n])}
    ctx.save({"blur": results})
    print(f"\n| 16->32 stage | FID (32x32, {n} samples) |\n| --- | --- |")
    print(f"| with blur augmentation | {results['with_blur']:.3f} |")
    print(f"| without | {results['without_blur']:.3f} |")


def part_steps(ctx):
    labels, steps = ctx.samples()
    low16 = steps[ctx.pipeline.stage_names[-2]]
    n = ctx.args.steps_samples
    rows = []
    for steps, ends in BETA_ENDS.items():
        schedules = [{"schedule": "linear", "num_timesteps": steps, "beta_start": 1e-4, "beta_end": b,
                      "variance": "fixed_small"} for b in ends]
        result = search_noise_schedule(ctx.pipeline, 2, steps, ctx.evaluate(32), labels[:n], seed=ctx.args.seed,
                                       schedules=schedules, low_res_images=low16[:n], batch_size=250)
        rows.append({"steps": steps, "best": result.best, "all": result.rows})
    ctx.save({"steps": {"samples": n, "rows": rows}})
    print(f"\n| steps | best beta_end | FID (32x32, {n} samples) |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['steps']} | {row['best']['beta_end']} | {row['best']['fid']:.3f} |")


def part_budget(ctx):
    labels, steps = ctx.samples()
    n, names = ctx.args.budget_samples, ctx.pipeline.stage_names
    labels = labels[:n]
    sizes = {name: stage.unet.image_size for name, stage in zip(names, ctx.pipeline.stages)}

    def judge(size):
        fid_of, real = ctx.evaluate(size), real_digits("train", size)[0]
        pixel = ctx.classifier(size, "pixel")

        def evaluate(images):
            return {**fid_of(images), "near_black": pixel_statistics(images)["near_black"],
                    "histogram_tv": histogram_distance(images, real),
                    "recognition": recognition_accuracy(pixel, images, labels, 10)["top1"]}

        return evaluate

    pipeline = CascadedDiffusionPipeline(ctx.pipeline.stages, ctx.pipeline.sampling)
    guards = dict(g.split(":") for g in ctx.args.budget_guards)
    key = f"budget_{ctx.args.budget}" + "".join(f"_{g}" for g in guards) + (
        f"_{ctx.args.budget_tag}" if ctx.args.budget_tag else "")
    earlier = json.loads(ctx.results_path.read_text()) if ctx.results_path.exists() else {}
    stage_rows = next((v["stages"] for k, v in earlier.items() if k.startswith("budget_")
                       and v.get("samples") == n), None)  # phase 1 does not depend on the budget or the guards
    start = time.time()
    result = search_step_budget(pipeline, ctx.args.budget, {name: judge(sizes[name]) for name in names}, labels,
                                seed=ctx.args.seed, step_counts=tuple(ctx.args.budget_step_counts),
                                candidates=json.loads(ctx.args.budget_candidates) if ctx.args.budget_candidates
                                else None,
                                max_cascades=ctx.args.budget_cascades,
                                intermediates={name: steps[name][:n] for name in names}, batch_size=250,
                                guards=guards, guard_tolerance=ctx.args.budget_tolerance, stage_rows=stage_rows,
                                plot_path=ctx.out / f"{key.replace('budget', 'step_budget')}.png")
    ctx.save({key: {"guards": guards, "guard_tolerance": ctx.args.budget_tolerance,
        "samples": n, "seconds": round(time.time() - start, 1), "reference": result.reference,
        "stages": {name: r.rows for name, r in result.stages.items()}, "cascades": result.cascades.rows,
        "best": result.best, "best_settings": result.best_settings,
        "skipped": {name: [[c, why] for c, why in s] for name, s in result.skipped.items()}}})
    print(f"\n| split ({' / '.join(names)}) | NFE | FID (32x32) | recognition | near-black | histogram TV |"
          "\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in [result.reference] + result.cascades.rows:
        print(f"| {' / '.join(row[name] for name in names)} | {row['nfe']} | {row['fid']:.2f} | "
              f"{100 * row['recognition']:.1f} % | {100 * row['near_black']:.1f} % | {row['histogram_tv']:.4f} |")


def part_guidance(ctx):
    """Classifier-free guidance: for each of --guidance-stages, that stage retrained with
    label dropout (a stage preset in --guidance-dir) replaces the preset's, and its
    guidance scale is swept, scored at the stage's own resolution and at the end of the
    cascade (the other stages unguided, the preset's settings), beside the preset's own
    stage (no label dropout). Judges: domain FID, pixel recognition (fidelity to the
    class), precision and recall (Kynkaenniemi et al.) of the domain classifier's features
    against as many real training digits, near-black share and histogram TV."""
    for name in ctx.args.guidance_stages:
        folder = Path(ctx.args.guidance_dir) / name
        if (folder / "config.json").exists():
            _guidance_of_stage(ctx, name, folder)
        else:
            print(f"guidance: no {name} stage trained with label dropout at {folder}; train it with `python "
                  f"scripts/train_cdm_mnist32.py --stages {name} --label-dropout 0.1 --workdir {folder.parent.parent} "
                  "--no-assemble`")


def _guidance_of_stage(ctx, name, folder):
    n, scales, names = ctx.args.guidance_samples, ctx.args.guidance_scales, ctx.pipeline.stage_names
    k, labels = names.index(name), np.arange(n) % 10

    def judge(size):
        features = ClassifierFeatures(ctx.classifier(size))
        real = real_digits("train", size)[0]
        # precision and recall compare sets of one size (their k-NN radii depend on it): n real digits
        real_features = np.concatenate([features(real[i:min(i + 500, n)])["features"] for i in range(0, n, 500)])
        fid_of, pixel = ctx.evaluate(size), ctx.classifier(size, "pixel")

        def evaluate(images):
            generated = np.concatenate([features(images[i:i + 500])["features"] for i in range(0, len(images), 500)])
            return {**fid_of(images), **precision_recall(real_features, generated),
                    "recognition": recognition_accuracy(pixel, images, labels, 10)["top1"],
                    "near_black": pixel_statistics(images)["near_black"],
                    "histogram_tv": histogram_distance(images, real)}

        return evaluate

    stages = list(ctx.pipeline.stages)
    stages[k] = DiffusionModel.from_preset(str(folder))
    guided = CascadedDiffusionPipeline(stages, ctx.pipeline.sampling)
    plain = CascadedDiffusionPipeline(ctx.pipeline.stages, ctx.pipeline.sampling)
    size = stages[k].unet.image_size
    results, start = {"stage": name, "size": size, "samples": n, "scales": scales, "preset": str(folder)}, time.time()
    for key, through in (("base", False), ("cascade", True)):  # "base": the stage's own output
        evaluate = judge(32 if through else size)
        result = search_guidance_scale(guided, k, scales, evaluate, labels, seed=ctx.args.seed, batch_size=250,
                                       through_cascade=through)
        preset = search_guidance_scale(plain, k, [1.0], evaluate, labels, seed=ctx.args.seed, batch_size=250,
                                       through_cascade=through, verbose=False)
        results[key] = {"rows": result.rows, "preset_base": preset.rows[0]}
    results["seconds"] = round(time.time() - start, 1)
    suffix = "" if k == 0 else f"_{name}"
    ctx.save({f"guidance{suffix}": results})
    plot_guidance(results, ctx.out / f"guidance_curves{suffix}.png")
    # Pictures: one row per scale, the same seeds and labels (0-9): the stage's output (enlarged) and 32x32.
    rows_stage, rows32 = [], []
    for scale in scales:
        guided.set_sampling(k, guidance_scale=scale)
        images, steps = guided.generate(labels=np.arange(10), seed=ctx.args.seed, batch_size=10,
                                        return_intermediates=True, verbose=False)
        rows_stage.append(keras.ops.convert_to_numpy(keras.ops.image.resize(
            steps[name].astype("float32"), (32, 32), interpolation="nearest")).astype("uint8"))
        rows32.append(images)
    save_image_grid(np.concatenate(rows_stage), ctx.out / f"guidance_rows{suffix}_{size}.png", columns=10)
    save_image_grid(np.concatenate(rows32), ctx.out / f"guidance_rows{suffix}_32.png", columns=10)
    print(f"wrote {ctx.out}/guidance_rows{suffix}_*.png (one row per scale: {scales})")
    for key in ("base", "cascade"):
        print(f"\n{name} guided, scored at {size if key == 'base' else 32}x: | guidance scale | FID | recognition | "
              "precision | recall | near-black | histogram TV |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, row in [(f"preset {name}, no label dropout", results[key]["preset_base"])] + [
                (f"{row['guidance_scale']:g}", row) for row in results[key]["rows"]]:
            print(f"| {label} | {row['fid']:.2f} | {100 * row['recognition']:.1f} % | {row['precision']:.3f} | "
                  f"{row['recall']:.3f} | {100 * row['near_black']:.1f} % | {row['histogram_tv']:.4f} |")


def plot_guidance(results, path):
    """FID, recognition, precision and recall against the guidance scale, at the guided
    stage's resolution and at 32x32 (dashed: the preset's own stage, no label dropout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, size = results.get("stage", "base"), results.get("size", 8)
    figure, axes = plt.subplots(2, 3, figsize=(11, 6), dpi=100)
    for row, key in enumerate(("base", "cascade")):
        rows, preset = results[key]["rows"], results[key]["preset_base"]
        scales = [r["guidance_scale"] for r in rows]
        panels = (("fid", ("fid",)), ("recognition", ("recognition",)), ("precision / recall", ("precision", "recall")))
        for axis, (title, metrics) in zip(axes[row], panels):
            for metric in metrics:
                line, = axis.plot(scales, [r[metric] for r in rows], marker="o", label=metric)
                axis.axhline(preset[metric], color=line.get_color(), linestyle="--", linewidth=0.8)
            where = f"{size}x{size} {name}" if key == "base" else "32x32 cascade"
            axis.set_title(f"{title} ({where})", fontsize=9)
            axis.set_xlabel(f"guidance scale of the {name} stage")
            if len(metrics) > 1:
                axis.legend(fontsize=8)
    figure.suptitle(f"Classifier-free guidance of cdm_mnist32's {name} ({results['samples']} samples; "
                    f"dashed: the preset's {name}, no label dropout)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def part_pictures(ctx):
    labels = np.repeat(np.arange(10), 10)
    images, steps = ctx.pipeline.generate(labels=labels, seed=ctx.args.seed, batch_size=100,
                                          return_intermediates=True, verbose=False)
    save_image_grid(images, ctx.out / "grid.png", labels=labels, columns=10)
    stages = [keras.ops.convert_to_numpy(keras.ops.image.resize(steps[name][::10].astype("float32"), (32, 32),
                                                                 interpolation="nearest"))
              for name in ctx.pipeline.stage_names]
    path = save_image_grid(np.concatenate(stages).astype("uint8"), ctx.out / "stages.png", columns=10)
    print(f"\nwrote {ctx.out / 'grid.png'} and {path} (rows: 8x8, 16x16, 32x32; nearest-neighbour enlarged)")
    # The last stage vs a bicubic resize of its own inputs, for 20 of the grid's samples.
    names, pick = ctx.pipeline.stage_names, np.arange(0, 100, 5)
    low = from_uint8(steps[names[-2]][pick])
    bicubic = keras.ops.convert_to_numpy(keras.ops.image.resize(low, (32, 32), interpolation="bicubic"))
    rows = [np.clip(bicubic[:10], -1, 1), from_uint8(images[pick[:10]]),
            np.clip(bicubic[10:], -1, 1), from_uint8(images[pick[10:]])]
    path = save_image_grid(np.concatenate(rows), ctx.out / "stage_vs_bicubic.png", columns=10)
    print(f"wrote {path} (rows 1 and 3: the 16x16 samples resized bicubically; 2 and 4: the {names[-1]} stage)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cdm_mnist32")
    parser.add_argument("--noblur-stage", default="runs/cdm_mnist32_noblur/stages/sr32")
    parser.add_argument("--out", default="docs/cdm_mnist32")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--table3-samples", type=int, default=500)
    parser.add_argument("--table3-inputs", nargs="+", choices=("generated", "real"), default=["generated", "real"])
    parser.add_argument("--ablation-samples", type=int, default=1000)
    parser.add_argument("--steps-samples", type=int, default=500)
    parser.add_argument("--mismatch-base-steps", default="ddim10",
                        help="the base stage's few-step sampling of the mismatch part (its grid must hold s - 1)")
    parser.add_argument("--budget", type=int, default=40, help="network evaluations per image (budget part)")
    parser.add_argument("--budget-samples", type=int, default=5000)
    parser.add_argument("--budget-step-counts", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--budget-cascades", type=int, default=4, help="splits sampled end to end")
    parser.add_argument("--budget-guards", nargs="*", default=[], metavar="SCORE:higher|lower",
                        help="scores the best split must not make worse than the preset's settings")
    parser.add_argument("--budget-tolerance", type=float, default=0.0, help="relative slack of the guards")
    parser.add_argument("--budget-candidates", help="JSON: {stage: [sampling settings]} instead of the grid")
    parser.add_argument("--budget-tag", help="suffix of the result's key and plot (several runs of one budget)")
    parser.add_argument("--guidance-stages", nargs="+", default=["base"], choices=("base", "sr16", "sr32"),
                        help="the stages to guide, one at a time (guidance part)")
    parser.add_argument("--guidance-dir", default="runs/cdm_mnist32_cfg/stages",
                        help="stage presets trained with label dropout, one folder per stage name")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0])
    parser.add_argument("--guidance-samples", type=int, default=2000)
    args = parser.parse_args(argv)
    ctx = Context(args)
    for part in args.only:
        start = time.time()
        globals()[f"part_{part}"](ctx)
        ctx.save({f"{part}_seconds": round(time.time() - start, 1)})
        print(f"[{part}: {time.time() - start:.0f} s]")


if __name__ == "__main__":
    main()
