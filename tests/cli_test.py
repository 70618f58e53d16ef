import subprocess
import sys

import pytest

import keras_cdm
from keras_cdm import cli
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
        (["architecture", "cdm_imagenet32_base", "--dtype", "float8"], "`dtype` must be None or a Keras dtype policy"),
        (["sample"], "invalid choice: 'sample'"),
    ],
)
def test_bad_arguments_give_one_line_error_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(("keras-cdm: error:", "usage"))


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "keras_cdm", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == f"keras-cdm {keras_cdm.__version__}"
