"""The README's ```python examples run as written (paper-size builds are left to `large`).

Fragments that need context (a multi-GPU machine, a user's dataset) are fenced ```py
and are not run.
"""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.backend_neutral
@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if "unet_from_preset(" not in b])
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


@pytest.mark.large
@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if "unet_from_preset(" in b])
def test_readme_paper_size_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_has_examples():
    assert len(BLOCKS) >= 4
