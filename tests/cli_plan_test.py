"""`keras-cdm plan`: memory per device of a paper stage, and the recommended setup."""

import pytest

from tests.cli_test import run

pytestmark = pytest.mark.backend_neutral


def test_plan_prints_the_table_of_a_paper_stage(capsys):
    code, out, _ = run(capsys, "plan", "cdm_imagenet64_to_128", "--devices", "8", "--device-memory", "80",
                       "--model-axis", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("cdm_imagenet64_to_128: 536 M parameters, global batch 1024, 8 devices of 80 GiB")
    assert [line.split()[:2] + line.split()[3:4] for line in lines[2:6]] == [
        ["1", "8", "no"], ["1", "8", "yes"], ["2", "4", "no"], ["2", "4", "yes"]]
    # state: 536,043,139 float32 weights, gradients, 2 Adam moments and the EMA, replicated: 9.98 GiB
    assert lines[2].split()[4] == f"{536043139 * 4 * 5 / 2**30:.2f}"
    assert lines[-1].startswith("recommended: DiffusionUNet(remat=")


@pytest.mark.parametrize("argv,message", [
    (["plan", "cdm_imagenet64_to_128", "--model-axis", "3"], "`model_axis` must be None or a divisor of `devices`"),
    (["plan", "cdm_imagenet64", "--devices", "8"], "is a cascade; name one of its stages"),
    (["plan", "cdm_imagenet64_to_128", "--device-memory", "-1"], "`device_memory` must be a finite number"),
])
def test_plan_bad_arguments_end_with_one_error_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
