import subprocess
import sys

import pytest

import keras_cdm
from keras_cdm import CascadedDiffusionPipeline, cli
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
         "`batch_size` must be a positive integer"),
        (["sample", "--preset", "tiny_cascade", "--labels", "x", "--out", "x.png"], "invalid int value: 'x'"),
        (["architecture", "tiny_cascade", "--dtype", "mixed_bfloat16"], "--dtype applies to stage presets"),
        (["upload", "nowhere", "hf://me/repo"], "Preset folder not found"),
        (["sample", "--preset", "tiny_cascade", "--per-class", "0", "--out", "x.png"],
         "--per-class takes a positive integer and replaces --labels"),
        (["sample", "--preset", "tiny_cascade", "--per-class", "2", "--labels", "1", "--out", "x.png"],
         "--per-class takes a positive integer and replaces --labels"),
    ],
)
def test_bad_arguments_give_one_line_error_and_exit_2(capsys, tiny_presets, argv, message):  # noqa: F811
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(("keras-cdm: error:", "keras-cdm sample: error:", "usage"))


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
    cli._apply_sampling(pipeline, args.steps, args.sampler)
    assert [(s["sampler"], s["num_steps"]) for s in pipeline.sampling] == [
        ("dpm++2m-sde", "logsnr8"), ("dpm++2m-sde", "karras5"), ("dpm++2m-sde", None)]
    cli._apply_sampling(pipeline, None, ["dpm++3m", "ddim", "dpm++2m"])
    assert [(s["sampler"], s["num_steps"]) for s in pipeline.sampling] == [
        ("dpm++3m", "logsnr8"), ("ddim", "karras5"), ("dpm++2m", None)]


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
    code, out, err = run(capsys, "evaluate", "--preset", "tiny_cascade", "--metric", metric, "--data", str(real),
                         "--num-samples", "6", "--extractor", str(classifier), "--feature-layer", "features",
                         "--cas-epochs", "1", "--batch-size", "3", "--json", str(tmp_path / "r.json"))
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
        (["--metric", "is", "--num-samples", "0"], "--num-samples must be a positive integer"),
    ],
)
def test_evaluate_errors_are_one_line(capsys, tiny_presets, evaluation_inputs, tmp_path, monkeypatch,  # noqa: F811
                                      extra, message):
    real, classifier = evaluation_inputs
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    extra = [str(real) if e == "REAL" else str(classifier) if e == "CLASSIFIER" else e for e in extra]
    code, _, err = run(capsys, "evaluate", "--preset", "tiny_cascade", *(["--num-samples", "2"] + extra))
    assert code == 2 and message in err and "Traceback" not in err
