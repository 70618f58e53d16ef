"""The main job (`make demo`: 100 digits of `cdm_mnist32`) with the preset's sampling settings
vs the 125-NFE settings it shipped with before the step-budget search, the same weights,
measured side by side in one run.

    KERAS_BACKEND=tensorflow python benchmarks/demo_sampling.py [--rounds 3] [--cli]

For each setting: network evaluations per image, the seconds of `pipeline.generate` per
stage on the first call (tracing and compilation included) and in steady state (median of
`--rounds` calls, the two settings alternating so that both see the same machine), and with
`--cli` the wall time of the whole `keras-cdm sample` command of `make demo` (a fresh
process: imports, preset loading, compilation, sampling, the PNG) and the first and second
`generate` of a fresh process (the in-process first call of the preset's settings comes after
the old settings' first call, which has warmed up what the two share), the old settings from a
copy of the preset that differs only in its sampling settings. Prints the ratios new / old
and writes docs/performance/demo_sampling_<backend>.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from keras_cdm import CascadedDiffusionPipeline

ROOT = Path(__file__).resolve().parent.parent
PRESET = "cdm_mnist32"
BEFORE = [  # the preset's settings before the step-budget search: 50 + 50 + 25 network evaluations
    {"sampler": "ancestral", "num_steps": "ddim50"},
    {"sampler": "ancestral", "num_steps": 50},
    {"sampler": "ancestral", "num_steps": None, "noise_schedule": {
        "schedule": "linear", "num_timesteps": 25, "beta_start": 1e-4, "beta_end": 0.3, "variance": "fixed_small"}},
]


def settings_of(pipeline, changes):
    return [{**current, **change} for current, change in zip(pipeline.sampling, changes)]


def timed_generate(pipeline, labels):
    start = time.perf_counter()
    pipeline.generate(labels=labels, seed=0, batch_size=len(labels), verbose=False)
    return time.perf_counter() - start, dict(pipeline.last_timings)


def timed_cli(preset, out):
    command = [sys.executable, "-m", "keras_cdm_cli", "sample", "--preset", str(preset), "--per-class", "10",
               "--seed", "0", "--batch-size", "100", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=os.environ.copy())
    return time.perf_counter() - start


FRESH = """
import json, sys, time
import numpy as np
from keras_cdm import CascadedDiffusionPipeline
pipeline = CascadedDiffusionPipeline.from_preset(sys.argv[1])
labels = np.repeat(np.arange(10), 10)
times = []
for _ in range(2):
    start = time.perf_counter()
    pipeline.generate(labels=labels, seed=0, batch_size=100, verbose=False)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def timed_fresh(preset):
    """(first, second) seconds of `generate` in a fresh process: what `make demo` samples in,
    with no earlier call of the other settings in the same process to warm anything up."""
    done = subprocess.run([sys.executable, "-c", FRESH, str(preset)], check=True, capture_output=True, text=True,
                          env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time the whole `keras-cdm sample` command, and "
                        "the first and second `generate` of a fresh process")
    args = parser.parse_args()
    new = CascadedDiffusionPipeline.from_preset(PRESET)
    old = CascadedDiffusionPipeline(new.stages, settings_of(new, BEFORE))  # the same stage objects: same weights
    pipelines = {"before (125 NFE)": old, "preset now": new}
    labels = np.repeat(np.arange(10), 10)
    rows = {name: {"nfe": sum(p.num_network_evaluations for p in pipe.plans),
                   "settings": [f"{s['sampler']} {s['num_steps']}" for s in pipe.sampling],
                   "first": timed_generate(pipe, labels), "steady": []} for name, pipe in pipelines.items()}
    for _ in range(args.rounds):
        for name, pipe in pipelines.items():
            rows[name]["steady"].append(timed_generate(pipe, labels))
    if args.cli:
        with tempfile.TemporaryDirectory() as tmp:
            old_preset = Path(tmp) / "before"
            old.save_to_preset(old_preset)
            for name in rows:
                rows[name]["cli"], rows[name]["fresh"] = [], []
            for _ in range(args.rounds):
                for name, preset in (("before (125 NFE)", old_preset), ("preset now", PRESET)):
                    rows[name]["cli"].append(timed_cli(preset, Path(tmp) / "grid.png"))
                    rows[name]["fresh"].append(timed_fresh(preset))
    print(f"backend {keras.backend.backend()}, 100 digits (make demo), batch 100, {args.rounds} rounds")
    report = {}
    for name, row in rows.items():
        steady = statistics.median(t for t, _ in row["steady"])
        per_stage = {stage: statistics.median(t[stage] for _, t in row["steady"]) for stage in new.stage_names}
        report[name] = {"nfe": row["nfe"], "settings": row["settings"], "first_call_s": round(row["first"][0], 2),
                        "steady_s": round(steady, 2), "steady_per_stage_s": {k: round(v, 2) for k, v in
                                                                            per_stage.items()}}
        if "cli" in row:
            report[name]["cli_wall_s"] = round(statistics.median(row["cli"]), 2)
            for key, index in (("fresh_first_call_s", 0), ("fresh_second_call_s", 1)):
                report[name][key] = round(statistics.median(times[index] for times in row["fresh"]), 2)
        print(f"{name:18s} NFE {row['nfe']:4d}  {', '.join(row['settings'])}")
        print(f"{'':18s} first call {row['first'][0]:6.2f} s, steady {steady:6.2f} s ("
              + ", ".join(f"{k} {v:.2f}" for k, v in per_stage.items()) + ")"
              + (f", whole command {report[name]['cli_wall_s']:.2f} s; fresh process: first call "
                 f"{report[name]['fresh_first_call_s']:.2f} s, second {report[name]['fresh_second_call_s']:.2f} s"
                 if "cli" in row else ""))
    before, now = report["before (125 NFE)"], report["preset now"]
    ratios = {"nfe": now["nfe"] / before["nfe"], "first_call": now["first_call_s"] / before["first_call_s"],
              "steady": now["steady_s"] / before["steady_s"]}
    if "cli_wall_s" in now:
        ratios["whole_command"] = now["cli_wall_s"] / before["cli_wall_s"]
        ratios["fresh_first_call"] = now["fresh_first_call_s"] / before["fresh_first_call_s"]
    print("ratios now / before: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    out = ROOT / "docs" / "performance" / f"demo_sampling_{keras.backend.backend()}.json"
    out.write_text(json.dumps({"rounds": args.rounds, "rows": report, "ratios": ratios,
                               "cpu_count": os.cpu_count()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
