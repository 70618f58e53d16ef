"""The guides in guides/: keras-io format, each runs end to end in fast mode, rendered copies.

Each guide runs as its own process (with KERAS_BACKEND=tensorflow, whatever backend the
pytest pass uses), so these tests are marked `guides` and run once, in the JAX pass of
`make test` (the lighter one). The Hub guide talks to a loopback Hub (keras_cdm/testing/hub_server.py).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from keras_cdm.testing.hub_server import HubServer
from scripts import render_guides as render

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.guides

EXPECTED = {
    "getting_started", "conditioning_augmentation", "training_a_cascade",
    "distributed_training", "evaluating_a_cascade", "sharing_on_the_hub",
}
GUIDES = {p.stem: p for p in render.guide_paths()}
RENDERED = ROOT / "guides" / "rendered"


def test_the_six_guides_exist():
    assert set(GUIDES) == EXPECTED


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide_follows_the_keras_io_format(name):
    source = GUIDES[name].read_text()
    header, cells = render.parse(GUIDES[name])
    assert header["Title"] and header["Description"] and header["Accelerator"]
    kinds = [k for k, _ in cells]
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4
    assert any(t.startswith("## ") for k, t in cells if k == "markdown")
    # The backend is chosen before keras (or keras_cdm) is imported.
    backend_at = source.index('os.environ["KERAS_BACKEND"]')
    first_import = min(i for i in (source.find("import keras"), source.find("from keras")) if i >= 0)
    assert backend_at < first_import
    assert 'os.environ.get("KERAS_CDM_GUIDES_FAST")' in source
    # Public API only.
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith("tests") or ".__" in m or m.split(".")[-1].startswith("_")
                   for m in imported if m)


def _env(tmp_path):
    env = dict(os.environ)
    env.update(KERAS_CDM_GUIDES_FAST="1", KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub-cache"), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("HF_TOKEN", None)
    return env


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide_runs_end_to_end_in_fast_mode(name, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _env(tmp_path)
    with HubServer() as server:
        if name == "sharing_on_the_hub":
            env.update(HF_ENDPOINT=server.endpoint, HF_TOKEN="guide-test-token",
                       KERAS_CDM_GUIDES_HUB_REPO="guide-tester/cdm-mnist32")
            env.pop("HF_HUB_OFFLINE")
        proc = subprocess.run([sys.executable, str(GUIDES[name])], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    figures = sorted(work.glob(f"{name}*.png"))
    assert figures, f"{name} wrote no figure; files: {sorted(p.name for p in work.iterdir())}"
    for figure in figures:
        with Image.open(figure) as image:
            assert min(image.size) >= 16


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_rendered_guide_is_committed_with_its_figures(name):
    markdown = RENDERED / f"{name}.md"
    assert markdown.is_file(), f"run `python scripts/render_guides.py {name}`"
    text = markdown.read_text()
    header, cells = render.parse(GUIDES[name])
    assert text.startswith(f"# {header['Title']}")
    # The rendered copy is of the current guide: every code cell appears in it.
    for kind, cell in cells:
        if kind == "code":
            assert cell in text, f"guides/rendered/{name}.md is stale: re-render it"
    images = [line[line.index("(") + 1:-1] for line in text.splitlines() if line.startswith("![")]
    assert images, "the rendered guide shows no figure"
    for image in images:
        assert (RENDERED / image).is_file(), image
    assert (RENDERED / f"{name}.ipynb").is_file()


def test_render_runs_cells_and_embeds_output_and_figures(tmp_path):
    guide = tmp_path / "tiny_guide.py"
    guide.write_text('''"""
Title: Tiny
Author: someone
Date created: 2026/11/27
Last modified: 2026/11/27
Description: A test guide.
Accelerator: None
"""

"""
## Setup
"""
import os
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"
print("fast" if FAST else "full")
print("progress 10%\\rprogress 100%")

"""
## A figure
"""
from PIL import Image
Image.new("RGB", (20, 20)).save("tiny_guide_figure.png")
''')
    out = tmp_path / "out"
    markdown = render.render(guide, out, fast=True)
    text = markdown.read_text()
    assert text.startswith("# Tiny\n")
    assert "## Setup" in text and "```python\nimport os" in text
    assert "```\nfast\nprogress 100%\n```" in text  # the \r-redrawn line as a terminal shows it
    assert "![tiny_guide_figure](tiny_guide_figure.png)" in text
    assert (out / "tiny_guide_figure.png").is_file()
    notebook = (out / "tiny_guide.ipynb").read_text()
    assert '"cell_type": "code"' in notebook


def test_render_reports_a_failing_guide(tmp_path):
    guide = tmp_path / "broken.py"
    guide.write_text('"""\nTitle: B\nAuthor: a\nDate created: x\nLast modified: x\nDescription: d\n'
                     'Accelerator: None\n"""\n\n"""\n## S\n"""\nraise RuntimeError("boom")\n')
    with pytest.raises(RuntimeError, match="broken.py failed"):
        render.render(guide, tmp_path / "out", fast=True)
