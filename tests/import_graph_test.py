"""The package's import graph is a one-way chain (shared/DESIGN.md, principle 8): each module
imports only modules before it in `ORDER`, function-level imports included, so there is
no loop and no import that climbs back up; no module imports the package face."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral
PACKAGE = Path(__file__).resolve().parent.parent / "keras_cdm"

# Conventions first, then the paper's order; preset I/O before the models that use it.
ORDER = [
    "version", "_validation", "_compile", "images", "seeding", "schedules", "losses", "layers", "lora", "unet", "solvers", "diffusion",
    "conditioning", "guidance", "sampling", "_data_epochs", "ema", "_files", "_hub", "presets", "adapters", "diffusion_model", "pipeline",
    "visualization", "callbacks", "distribution", "data", "evaluation", "precision_recall", "search", "step_budget", "memory_plan",
    "cli", "__main__",
    "testing", "testing.golden", "testing.hub_server",
]


def _modules():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path, modules):
    """Package modules imported anywhere in the file (module or function level)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports only")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_cdm"):
            base = node.module[len("keras_cdm"):].lstrip(".")
            subs = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            targets.update(s for s in subs if s in modules)
            if not any(s in modules for s in subs):
                targets.add(base)
        elif isinstance(node, ast.Import):
            targets.update(a.name[len("keras_cdm"):].lstrip(".") for a in node.names
                           if a.name == "keras_cdm" or a.name.startswith("keras_cdm."))
    return targets


def test_every_module_has_a_place_in_the_chain():
    assert sorted(set(_modules()) - {""}) == sorted(ORDER)


def test_imports_only_go_down_the_chain():
    modules = _modules()
    rank = {name: i for i, name in enumerate(ORDER)}
    climbing = []
    for name in ORDER:
        for target in _imports(modules[name], modules):
            if target == "":
                climbing.append(f"{name} imports the package face keras_cdm")
            elif rank[target] >= rank[name]:
                climbing.append(f"{name} imports {target}")
    assert not climbing, climbing


def test_preset_io_imports_no_model_class():
    # As in keras-hub: models import preset I/O, never the reverse; presets check class names.
    modules = _modules()
    assert _imports(modules["presets"], modules) <= {"version", "_validation", "_files", "_hub"}


def test_the_face_imports_no_testing_module():
    face = _imports(_modules()[""], _modules())
    assert face and not any(target.startswith("testing") for target in face)
