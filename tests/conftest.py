import os

import keras
import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--large", action="store_true", default=False,
        help="run tests marked `large` (paper-size models; also CDM_RUN_LARGE=1)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--large") or os.environ.get("CDM_RUN_LARGE") == "1":
        return
    skip = pytest.mark.skip(reason="large: opt in with --large or CDM_RUN_LARGE=1")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts (and ends) with the float32 policy and a fixed seed."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")
