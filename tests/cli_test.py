import subprocess
import sys
import time

import numpy as np

import pytest

import keras_cdm
from keras_cdm import CascadedDiffusionPipeline, cli
from keras_cdm._validation import has_control_characters
from tests.presets_test import tiny_presets  # noqa: F401  (fixture)

pytestmark = pytest.mark.backend_neutral


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"keras-cdm {keras_cdm.__version__}"
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "architecture" in out and "presets" in out
    code, out, _ = run(capsys)
    assert code == 0 and "usage: keras-cdm" in out


def test_presets_lists_every_builtin(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == sorted(keras_cdm.list_presets())


def test_architecture_prints_summary_and_parameter_count(capsys, tiny_presets):  # noqa: F811
    code, out, _ = run(capsys, "architecture", "tiny_stage")
    expected = keras_cdm.unet_from_preset("tiny_stage").count_params()
    assert code == 0
    assert "middle_attention" in out and f"tiny_stage: {expected:,} parameters" in out
    assert "peak resident memory" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["architecture", "cdm_imagenet32"], "Unknown preset. Valid names:"),
        (["architecture", "tiny_stage", "--dtype", "float8"], "`dtype` must be None or a Keras dtype policy"),
        (["train"], "invalid choice: 'train'"),
        (["sample", "--preset", "tiny_cascad", "--labels", "1", "--out", "x.png"], "Did you mean 'tiny_cascade'?"),
        (["sample", "--preset", "tiny_cascade", "--labels", "7", "--out", "x.png"],
         "`labels` must be a non-empty list of integers in [0, 3)"),
        (["sample", "--preset", "tiny_cascade", "--labels", "1", "--out", "x.png", "--steps", "2", "3"],
         "--steps takes one value, or one per stage (3: ['base', 'sr16', 'sr32']). Received: 2 values"),
        (["sample", "--preset", "tiny_cascade", "--labels", "1", "--out", "x.png", "--sampler", "euler"],
         "`sampler` must be one of ['ancestral', 'ddim', 'dpm++2m', 'dpm++3m', 'dpm++2m-sde']"),
        (["sample", "--preset", "tiny_cascade", "--labels", "1", "--out", "x.png", "--sampler", "ddim", "ddim"],
         "--sampler takes one value, or one per stage (3: ['base', 'sr16', 'sr32']). Received: 2 values"),
        (["sample", "--preset", "tiny_cascade", "--labels", "1", "--out", "x.png", "--steps", "karras0"],
         '`section_counts` "karrasN" takes N in [1, 10]'),
        (["sample", "--preset", "tiny_cascade", "--labels", "1", "--out", "x.jpg"], "the path must end in .png"),
        (["sample", "--preset", "tiny_cascade", "--labels", "1", "--out", "x.png", "--batch-size", "0"],
         "argument --batch-size: must be an integer in [1, 2147483647]. Received: '0'"),
        (["sample", "--preset", "tiny_cascade", "--labels", "x", "--out", "x.png"], "invalid int value: 'x'"),
        (["architecture", "tiny_cascade", "--dtype", "mixed_bfloat16"], "--dtype applies to stage presets"),
        (["upload", "nowhere", "hf://me/repo"], "Preset folder not found"),
        (["sample", "--preset", "tiny_cascade", "--per-class", "0", "--out", "x.png"],
         "argument --per-class: must be an integer in [1, 10000]. Received: '0'"),
        (["sample", "--preset", "tiny_cascade", "--per-class", "2", "--labels", "1", "--out", "x.png"],
         "--per-class takes a positive integer and replaces --labels"),
    ],
)
def test_bad_arguments_give_one_line_error_and_exit_2(capsys, tiny_presets, argv, message):  # noqa: F811
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(error_lines(err)) == 1 and err.strip().splitlines()[-1] == error_lines(err)[0]


def test_sample_writes_a_labelled_grid(capsys, tiny_presets, tmp_path):  # noqa: F811
    from PIL import Image

    out = tmp_path / "grids" / "grid.png"
    code, stdout, err = run(capsys, "sample", "--preset", "tiny_cascade", "--labels", "0", "1", "2", "1",
                            "--seed", "3", "--out", str(out), "--steps", "all", "all", "4", "--batch-size", "2",
                            "--columns", "2", "--quiet")
    assert code == 0, err
    assert f"wrote 4 samples (32x32) to {out}" in stdout
    assert "keras-cdm: warning: Preset 'tiny_cascade' has no trained weights" in err
    width, height = Image.open(out).size
    assert width == 2 * (64 + 2) + 2 and height == 2 * (64 + 12 + 2) + 2  # 2x2 tiles of 64 px + captions


def test_sample_per_class_writes_one_row_per_class(capsys, tiny_presets, tmp_path):  # noqa: F811
    from PIL import Image

    out = tmp_path / "grid.png"
    code, stdout, err = run(capsys, "sample", "--preset", "tiny_cascade", "--per-class", "2", "--out", str(out),
                            "--steps", "all", "all", "2", "--quiet")
    assert code == 0, err
    assert f"wrote 6 samples (32x32) to {out}" in stdout
    width, height = Image.open(out).size
    assert width == 2 * (64 + 2) + 2 and height == 3 * (64 + 12 + 2) + 2  # 3 classes x 2 columns


def test_steps_and_sampler_set_every_stage_or_each_one(tiny_presets):  # noqa: F811
    args = cli.build_parser().parse_args(["sample", "--preset", "tiny_cascade", "--out", "x.png", "--steps", "logsnr8",
                                          "karras5", "all", "--sampler", "dpm++2m-sde"])
    pipeline = CascadedDiffusionPipeline.from_preset("tiny_cascade", load_weights=False)
    cli._apply_sampling(pipeline, args)
    assert [(s["sampler"], s["num_steps"]) for s in pipeline.sampling] == [
        ("dpm++2m-sde", "logsnr8"), ("dpm++2m-sde", "karras5"), ("dpm++2m-sde", None)]
    args = cli.build_parser().parse_args(["sample", "--preset", "tiny_cascade", "--out", "x.png", "--sampler",
                                          "dpm++3m", "ddim", "dpm++2m"])
    cli._apply_sampling(pipeline, args)
    assert [(s["sampler"], s["num_steps"]) for s in pipeline.sampling] == [
        ("dpm++3m", "logsnr8"), ("ddim", "karras5"), ("dpm++2m", None)]


def test_guidance_scale_is_refused_for_stages_without_label_dropout(capsys, tiny_presets):  # noqa: F811
    args = cli.build_parser().parse_args(["sample", "--preset", "tiny_cascade", "--out", "x.png",
                                          "--guidance-scale", "1", "1", "1"])
    pipeline = CascadedDiffusionPipeline.from_preset("tiny_cascade", load_weights=False)
    cli._apply_sampling(pipeline, args)  # 1: no guidance, fine anywhere
    assert [s["guidance_scale"] for s in pipeline.sampling] == [1.0, 1.0, 1.0]
    code, _, err = run(capsys, "sample", "--preset", "tiny_cascade", "--per-class", "1", "--out", "x.png",
                       "--guidance-scale", "3")
    assert code == 2 and "`guidance_scale` needs a class-conditional U-Net with a 'no class' label" in err
    for bad in ("nan", "-1", "1000", "x"):
        code, _, err = run(capsys, "sample", "--preset", "tiny_cascade", "--per-class", "1", "--out", "x.png",
                           "--guidance-scale", bad)
        assert code == 2 and "argument --guidance-scale" in err and "Traceback" not in err


def test_architecture_of_a_cascade_lists_every_stage(capsys, tiny_presets):  # noqa: F811
    code, out, _ = run(capsys, "architecture", "tiny_cascade", "--no-summary")
    assert code == 0
    assert "base:" in out and "sr16:" in out and "sr32:" in out and "parameters in 3 stages" in out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "keras_cdm", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == f"keras-cdm {keras_cdm.__version__}"


@pytest.fixture
def evaluation_inputs(tmp_path):
    """A labelled folder of real 32x32 greyscale images and a tiny .keras classifier as extractor."""
    import keras
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(3):
        (tmp_path / "real" / f"class_{label}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
                tmp_path / "real" / f"class_{label}" / f"{i}.png")
    inputs = keras.Input((32, 32, 1))
    hidden = keras.layers.Dense(4, name="features")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(hidden)).save(tmp_path / "classifier.keras")
    return tmp_path / "real", tmp_path / "classifier.keras"


@pytest.mark.parametrize("metric,key", [("fid", "fid="), ("is", "is="), ("cas", "top1=")])
def test_evaluate_reports_the_metric(capsys, tiny_presets, evaluation_inputs, tmp_path, metric, key):  # noqa: F811
    import json

    real, classifier = evaluation_inputs
    options = {"fid": ["--data", str(real), "--extractor", str(classifier), "--feature-layer", "features"],
               "is": ["--extractor", str(classifier), "--feature-layer", "features"],
               "cas": ["--data", str(real), "--cas-epochs", "1"]}[metric]
    code, out, err = run(capsys, "evaluate", "--preset", "tiny_cascade", "--metric", metric, *options,
                         "--num-samples", "6", "--batch-size", "3", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert key in out and "samples=6" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metric"] == metric and result[key[:-1]] >= 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--metric", "fid", "--extractor", "CLASSIFIER"], "--metric fid needs --data"),
        (["--metric", "fid", "--data", "REAL", "--extractor", "x.txt"], "--extractor is 'inception' or a .keras"),
        (["--metric", "is"], "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"),
        (["--metric", "cas"], "--metric cas needs --data"),
        (["--metric", "is", "--num-samples", "0"], "argument --num-samples: must be an integer in [1, 10000000]"),
        # options that would be ignored are refused
        (["--metric", "is", "--data", "REAL"], "--data does not apply to --metric is (only to --metric fid or cas)"),
        (["--metric", "is", "--num-real", "5"], "--num-real does not apply to --metric is"),
        (["--metric", "fid", "--data", "REAL", "--cas-epochs", "3"], "--cas-epochs does not apply to --metric fid"),
        (["--metric", "cas", "--data", "REAL", "--extractor", "CLASSIFIER"], "--extractor does not apply to --metric cas"),
        (["--metric", "cas", "--data", "REAL", "--allow-download"], "--allow-download does not apply to --metric cas"),
        (["--metric", "fid", "--data", "REAL", "--split", "train"], "--split applies only to --data tfds:NAME"),
        (["--metric", "fid", "--data", "REAL", "--data-dir", "REAL"], "--data-dir applies only to --data tfds:NAME"),
        (["--metric", "is", "--feature-layer", "features"], "--feature-layer applies only to a .keras --extractor"),
        (["--metric", "is", "--extractor", "CLASSIFIER", "--allow-download"],
         "--allow-download applies only to --extractor inception"),
    ],
)
def test_evaluate_errors_are_one_line(capsys, tiny_presets, evaluation_inputs, tmp_path, monkeypatch,  # noqa: F811
                                      extra, message):
    real, classifier = evaluation_inputs
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    extra = [str(real) if e == "REAL" else str(classifier) if e == "CLASSIFIER" else e for e in extra]
    code, _, err = run(capsys, "evaluate", "--preset", "tiny_cascade", *(["--num-samples", "2"] + extra))
    assert code == 2 and message in err and "Traceback" not in err


# -- one error line, exit status 2, no traceback (issue 21, class 7) --------------------------------


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("keras-cdm: error:")]


def test_debug_shows_the_traceback_and_only_then(capsys, tmp_path):
    code, _, err = run(capsys, "upload", str(tmp_path / "nowhere"), "hf://me/repo")
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err
    for argv in (["--debug", "upload", str(tmp_path / "nowhere"), "hf://me/repo"],
                 ["upload", str(tmp_path / "nowhere"), "hf://me/repo", "--debug"]):
        with pytest.raises(ValueError, match="Preset folder not found"):
            cli.main(argv)


def test_an_unexpected_error_is_one_line_with_status_1(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "_cmd_presets", broken)
    code, _, err = run(capsys, "presets")
    assert code == 1 and error_lines(err) == [
        "keras-cdm: error: internal error (RuntimeError: a bug over two lines); run with --debug for the traceback"]
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["presets", "--debug"])


@pytest.mark.parametrize("error,code,message", [
    (MemoryError("Unable to allocate 728. TiB"), 2, "keras-cdm: error: not enough memory for this request "
                                                    "(Unable to allocate 728. TiB)"),
    (KeyboardInterrupt(), 130, "keras-cdm: error: interrupted"),
    (ImportError("No module named 'tensorflow_datasets'"), 2, "keras-cdm: error: No module named"),
])
def test_memory_interrupts_and_missing_packages_are_one_line(capsys, monkeypatch, error, code, message):
    def failing(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_presets", failing)
    got, _, err = run(capsys, "presets")
    assert got == code and len(error_lines(err)) == 1 and error_lines(err)[0].startswith(message)


def test_columns_are_bounded_by_the_number_of_images(capsys, tiny_presets, tmp_path):  # noqa: F811
    sample = ["sample", "--preset", "tiny_cascade", "--labels", "0", "1", "--out", str(tmp_path / "x.png")]
    code, _, err = run(capsys, *sample, "--columns", "1000000000")
    assert code == 2 and error_lines(err) == [
        "keras-cdm: error: sample: argument --columns: must be an integer in [1, 10000]. Received: '1000000000'"]
    code, _, err = run(capsys, *sample, "--columns", "3")
    assert code == 2 and error_lines(err) == [
        "keras-cdm: error: --columns must be in [1, 2] (the number of images). Received: --columns 3"]
    assert not (tmp_path / "x.png").exists()


def test_upload_to_an_unreachable_endpoint_fails_fast_naming_it(capsys, tiny_presets, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    code, _, err = run(capsys, "upload", str(tiny_presets), "hf://me/repo")
    assert time.perf_counter() - start < 20
    assert code == 2 and "Traceback" not in err and error_lines(err) == [
        f"keras-cdm: error: Could not upload {str(tiny_presets)!r} to hf://me/repo: the Hub cannot be reached at "
        "http://127.0.0.1:9 (ConnectError: [Errno 111] Connection refused)."]


def broken_keras_files(folder):
    """(name, path) of .keras files that are not Keras models."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.keras").write_bytes(np.random.default_rng(0).bytes(300))
    (folder / "empty.keras").write_bytes(b"")
    with zipfile.ZipFile(folder / "zip.keras", "w") as archive:
        archive.writestr("config.json", '{"class_name": "Nothing", "config": {}}')
        archive.writestr("metadata.json", "{not json")
    (folder / "truncated.keras").write_bytes((folder / "zip.keras").read_bytes()[:60])
    (folder / "folder.keras").mkdir(exist_ok=True)
    return sorted(folder.glob("*.keras"))


def test_evaluate_with_a_broken_extractor_is_one_line(capsys, tiny_presets, evaluation_inputs, tmp_path):  # noqa: F811
    real, classifier = evaluation_inputs
    for path in broken_keras_files(tmp_path / "broken"):
        code, _, err = run(capsys, "evaluate", "--preset", "tiny_cascade", "--metric", "fid", "--data", str(real),
                           "--num-samples", "2", "--extractor", str(path))
        assert code == 2 and "Traceback" not in err and len(error_lines(err)) == 1, (path, err)
        assert "--extractor" in error_lines(err)[0] and str(path) in error_lines(err)[0]


# -- CLI fuzz ----------------------------------------------------------------------------------------

CALL_LIMIT_S = 60  # per command, generous on 2 busy cores; refusals take milliseconds


def garbage(tmp_path):
    """(label, value) pairs: bad values for any option."""
    folder = tmp_path / "garbage"
    folder.mkdir(exist_ok=True)
    (folder / "file.txt").write_text("x")
    (folder / "dir.png").mkdir(exist_ok=True)
    values = ["-1", "0", "-0", "1e9", "1000000000", "99999999999999999999", "1" * 5000, "abc", "", " ", "nan",
              "inf", "-inf", "1.5", "0x10", "\x00", "a\x00b", "é", "日本語", "😀", "\n", "\t", "\x1b[31m",
              "\u202e", "-x", "--", "../../etc/passwd", "/nonexistent/path", str(folder), str(folder / "file.txt"),
              str(folder / "dir.png"), "/proc/nope/x.png", "/dev/null/x.png", "x" * 5000 + ".png"]
    return [(repr(v) if len(v) < 40 else repr(v[:30]) + "...", v) for v in values]


def cli_cases(tmp_path, tiny_presets, real, classifier):  # noqa: F811
    """([(label, argv, accepted)], valid commands): each case is a valid command with one option or
    argument given a bad value (or left out); `accepted` when the command takes that value."""
    broken = broken_keras_files(tmp_path / "broken")
    pool = garbage(tmp_path)
    out = str(tmp_path / "grid.png")
    sample = ["sample", "--preset", "tiny_cascade", "--labels", "0", "--out", out, "--quiet"]
    evaluate = ["evaluate", "--preset", "tiny_cascade", "--metric", "fid", "--data", str(real), "--extractor",
                str(classifier), "--feature-layer", "features", "--num-samples", "2", "--batch-size", "2"]
    upload = ["upload", str(tiny_presets), "hf://me/repo"]  # the Hub is unreachable: every upload fails

    def int_in(low, high):
        def accepts(v):
            try:
                return low <= int(v) <= high
            except ValueError:
                return False
        return accepts

    def written(v):  # a path --json may write: every other value than these (none outside tmp_path is tried)
        unwritable = ("", " ", "\x00", "a\x00b", "\n", "\t", "\x1b[31m", "-x", "--", "/proc/nope/x.png",
                      "/dev/null/x.png", "1" * 5000, "x" * 5000 + ".png", str(tmp_path / "garbage"),
                      str(tmp_path / "garbage" / "dir.png"))
        return v not in unwritable

    never = lambda v: False  # noqa: E731
    options = {
        "sample": (sample, {
            "--preset": never, "--revision": never, "--labels": int_in(0, 2), "--num-images": never,
            "--per-class": never, "--seed": int_in(0, 2**31 - 1), "--out": never, "--steps": never,
            "--sampler": never, "--batch-size": int_in(1, 2**31 - 1), "--columns": never}),
        "evaluate": (evaluate, {
            "--preset": never, "--revision": never, "--metric": never, "--data": never,
            "--data-dir": lambda v: v in (str(tmp_path / "garbage"), str(tmp_path / "garbage" / "dir.png")),
            "--split": lambda v: not has_control_characters(v) and len(v) <= 1000,
            "--num-samples": never, "--num-real": int_in(1, 10_000_000), "--extractor": never,
            "--feature-layer": never, "--inception-weights": lambda v: v == str(tmp_path / "garbage" / "file.txt"),
            "--cas-epochs": int_in(1, 10_000), "--steps": never, "--sampler": never,
            "--batch-size": int_in(1, 2**31 - 1), "--seed": int_in(0, 2**31 - 1), "--json": written}),
        "upload": (upload, {"--message": never}),
        "architecture": (["architecture", "tiny_stage", "--no-summary"], {"--dtype": never}),
    }
    cases = []
    for command, (valid, accepts) in options.items():
        for option, accepted in accepts.items():
            for label, value in pool:
                if option in valid:
                    at = valid.index(option)
                    argv = valid[:at + 1] + [value] + valid[at + 2:]
                else:
                    argv = valid + [option, value]
                cases.append((f"{command} {option} {label}", argv, accepted(value)))
        for at, token in enumerate(valid[1:], start=1):  # each positional argument, each required option left out
            if not token.startswith("--") and not valid[at - 1].startswith("--"):
                for label, value in pool:
                    cases.append((f"{command} positional {at} {label}", valid[:at] + [value] + valid[at + 1:],
                                  False))
        for required in ("--preset", "--out", "--metric"):
            if required in valid:
                at = valid.index(required)
                cases.append((f"{command} without {required}", valid[:at] + valid[at + 2:], False))
        cases.append((f"{command} --bogus", valid + ["--bogus"], False))
    for path in broken:
        cases.append((f"evaluate --extractor {path.name}", evaluate[:8] + [str(path)] + evaluate[9:], False))
    cases += [(f"presets {label}", ["presets", value], False) for label, value in pool[:10]]
    cases += [(f"command {label}", [value], False) for label, value in pool if value not in ("-x", "--")]
    cases.append(("--bogus", ["--bogus"], False))
    return cases, [sample, evaluate, options["architecture"][0]]


def test_fuzz_every_option_gives_one_error_line_and_status_2(capsys, tiny_presets, evaluation_inputs,  # noqa: F811
                                                             tmp_path, monkeypatch):
    from keras_cdm.testing import within

    real, classifier = evaluation_inputs
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    monkeypatch.chdir(tmp_path)
    loaded, load = {}, cli._load_pipeline

    def cached(preset, revision):  # one load per preset; a case that changed its sampling gets it back
        if (preset, revision) not in loaded:
            pipeline = load(preset, revision)
            loaded[preset, revision] = pipeline, pipeline.plans
        pipeline, plans = loaded[preset, revision]
        pipeline._plans = plans
        return pipeline

    monkeypatch.setattr(cli, "_load_pipeline", cached)
    cases, valid = cli_cases(tmp_path, tiny_presets, real, classifier)
    for argv in valid:  # the commands the cases spoil are valid: each case is refused for its bad value
        code, _, err = run(capsys, *argv)
        assert code == 0 and not error_lines(err), (argv, err)
    tried = refused = 0
    failures, start, per_command = [], time.perf_counter(), {}
    for label, argv, accepted in cases:
        if accepted:
            continue
        tried += 1
        per_command[label.split(" ")[0]] = per_command.get(label.split(" ")[0], 0) + 1
        try:
            (code, _, err), _ = within(CALL_LIMIT_S, lambda argv=argv: run(capsys, *argv))
        except AssertionError as error:  # a hang
            failures.append(f"{label}: {error}")
            continue
        problems = []
        if code != 2:
            problems.append(f"exit status {code}")
        if len(error_lines(err)) != 1:
            problems.append(f"{len(error_lines(err))} error lines")
        if "Traceback" in err:
            problems.append("a traceback")
        if problems:
            failures.append(f"{label}: {', '.join(problems)}: {err[-400:]!r}")
        else:
            refused += 1
    seconds = time.perf_counter() - start
    print(f"\nCLI fuzz: {tried} bad argument vectors tried, {refused} refused with one error line and status 2, "
          f"{len(failures)} not ({seconds:.1f} s); tried per command: {per_command}")
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} in all)"
    assert tried >= 300
