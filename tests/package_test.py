import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import keras_cdm

pytestmark = pytest.mark.backend_neutral
ROOT = Path(__file__).resolve().parent.parent


def test_public_api_is_pinned():
    assert sorted(keras_cdm.__all__) == [
        "AttentionBlock",
        "BlurConditioningAugmentation",
        "CascadedDiffusionPipeline",
        "ClassEmbedding",
        "ConditioningAugmentation",
        "DiffusionModel",
        "DiffusionUNet",
        "Downsample",
        "GaussianConditioningAugmentation",
        "GaussianDiffusion",
        "GroupNormalization",
        "ResidualBlock",
        "SamplingPlan",
        "TimestepEmbedding",
        "Upsample",
        "__version__",
        "image_grid",
        "list_presets",
        "save_image_grid",
        "unet_from_preset",
        "upload_preset",
    ]
    assert all(hasattr(keras_cdm, name) for name in keras_cdm.__all__)


@pytest.mark.parametrize("name", ["DiffusionUNet", "GaussianDiffusion", "DiffusionModel"])
def test_docstring_examples_run(name):
    import doctest

    import keras
    import numpy as np

    obj = getattr(keras_cdm, name)
    globs = {"np": np, "keras": keras, **{n: getattr(keras_cdm, n) for n in keras_cdm.__all__}}
    (test,) = [t for t in doctest.DocTestFinder().find(obj, name, globs=globs) if t.name == name]
    result = doctest.DocTestRunner().run(test, out=lambda s: None)
    assert result.attempted > 0 and result.failed == 0


def test_core_modules_do_not_import_tensorflow():
    code = (
        "import sys, keras_cdm, keras_cdm.cli, keras_cdm.evaluation, keras_cdm.search; "
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_installed_wheel_carries_the_presets(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("keras_cdm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert "keras_cdm/_presets/cdm_imagenet64_to_256/config.json" in names
    assert "keras_cdm/_presets/cdm_imagenet256/cdm_imagenet64_to_256/model.weights.h5" not in names
    assert "keras_cdm/_presets/cdm_imagenet256/config.json" in names
    assert "keras_cdm/_presets/cdm_mnist32/sr32/model.weights.h5" in names  # the trained cascade
    assert any(n.endswith("entry_points.txt") for n in names)
    code = ("import keras_cdm.presets as p; from keras_cdm import CascadedDiffusionPipeline as C; "
            "print(C.from_preset('cdm_mnist32').stage_names); "
            "print(p.builtin_presets_dir()); print(sorted(p.list_presets()))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    stages, found, listed = out.stdout.strip().splitlines()[-3:]
    assert stages == "['base', 'sr16', 'sr32']"
    assert Path(found) == tmp_path / "site" / "keras_cdm" / "_presets"
    assert "cdm_imagenet32_base" in listed
