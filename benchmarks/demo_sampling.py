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

    KERAS_BACKEND=tensorflow python benchmarks/demo_sampling.py --released [REV] [--rounds 3]

instead times `make demo` as it was at commit REV (default: the last commit before the
few-step samplers, whose `cdm_mnist32` has the same weights and the 125-NFE settings) against
the working tree, in fresh processes, alternating: the whole command and the first and second
`generate` of each. REV's `keras_cdm` and preset are exported with `git archive` into a
temporary folder, which goes first on the path; both use this environment's packages. This
compares the user's `make demo` before and after, including the changes to the sampling code
that the 125-NFE settings now benefit from too (the default mode isolates the settings).
Writes docs/performance/demo_sampling_released_<backend>.json.
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
RELEASED = "06b218c^"  # the last commit before the DPM-Solver++ samplers and the step-budget search
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


def timed_cli(preset, out, module="keras_cdm_cli", cwd=None):
    command = [sys.executable, "-m", module, "sample", "--preset", str(preset), "--per-class", "10",
               "--seed", "0", "--batch-size", "100", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=_environment(cwd), cwd=cwd)
    return time.perf_counter() - start


def _environment(code_root):
    """This process's environment, with `code_root` (a folder holding a `keras_cdm`) first on
    the path where given."""
    env = os.environ.copy()
    if code_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_root)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


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


def timed_fresh(preset, cwd=None):
    """(first, second) seconds of `generate` in a fresh process: what `make demo` samples in,
    with no earlier call of the other settings in the same process to warm anything up.
    `cwd`: a folder whose `keras_cdm` is imported instead of this checkout's."""
    done = subprocess.run([sys.executable, "-c", FRESH, str(preset)], check=True, capture_output=True, text=True,
                          env=_environment(cwd), cwd=cwd)
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_commit(revision, folder):
    """`keras_cdm` and the `cdm_mnist32` preset of commit `revision`, into `folder`."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "keras_cdm", f"presets/{PRESET}"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return commit


def compare_released(revision, rounds):
    """`make demo` at commit `revision` vs the working tree, fresh processes, alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        released = Path(tmp) / "released"
        released.mkdir()
        commit = export_commit(revision, released)
        runs = {"released": dict(cwd=released, module="keras_cdm.cli"), "now": dict(cwd=None, module="keras_cdm_cli")}
        times = {name: {"cli": [], "fresh": []} for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                times[name]["cli"].append(timed_cli(PRESET, Path(tmp) / "grid.png", run["module"], run["cwd"]))
                times[name]["fresh"].append(timed_fresh(PRESET, run["cwd"]))
    report = {name: {"whole_command_s": round(statistics.median(t["cli"]), 2),
                     "fresh_first_call_s": round(statistics.median(f[0] for f in t["fresh"]), 2),
                     "fresh_second_call_s": round(statistics.median(f[1] for f in t["fresh"]), 2),
                     "runs": t} for name, t in times.items()}
    ratios = {key: report["now"][key] / report["released"][key]
              for key in ("whole_command_s", "fresh_first_call_s", "fresh_second_call_s")}
    print(f"backend {keras.backend.backend()}, make demo (100 digits, batch 100), {rounds} rounds alternating; "
          f"released = {revision} ({commit[:10]}), now = working tree")
    for name, row in report.items():
        print(f"{name:9s} whole command {row['whole_command_s']:6.2f} s; fresh process: first generate "
              f"{row['fresh_first_call_s']:6.2f} s, second {row['fresh_second_call_s']:6.2f} s")
    print("ratios now / released: " + ", ".join(f"{k[:-2]} {v:.2f}x" for k, v in ratios.items()))
    out = ROOT / "docs" / "performance" / f"demo_sampling_released_{keras.backend.backend()}.json"
    out.write_text(json.dumps({"revision": revision, "commit": commit, "rounds": rounds, "rows": report,
                               "ratios": ratios, "cpu_count": os.cpu_count()}, indent=1))
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time the whole `keras-cdm sample` command, and "
                        "the first and second `generate` of a fresh process")
    parser.add_argument("--released", nargs="?", const=RELEASED, default=None, metavar="REV",
                        help=f"time make demo at commit REV (default {RELEASED}) against the working tree instead")
    args = parser.parse_args()
    if args.released is not None:
        return compare_released(args.released, args.rounds)
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
