"""Presets from untrusted sources (issue 21): malformed and absurd files, odd names and
handles, overwriting, and a save killed half-way. Every bad input must give a clean
ValueError naming what was wrong, quickly: never a hang, a crash or a raw traceback."""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, presets
from keras_cdm import _files
from keras_cdm.cli import main as cli_main
from keras_cdm.diffusion import GaussianDiffusion
from keras_cdm.testing import randomize_weights
from keras_cdm.unet import DiffusionUNet

# File checks and config validation do not depend on the backend: run once.
pytestmark = pytest.mark.backend_neutral

PACKAGE = Path(__file__).resolve().parent.parent / "keras_cdm"
LIMIT_S = 10.0  # per call: generous for 2 busy cores; the refusals take milliseconds

# Values no config, name or argument should take, of every kind: types, NaN/inf, huge,
# negative, empty, unicode, control characters, nesting.
BAD_VALUES = [
    None, True, False, -1, 0, 1.5, -0.5, math.nan, math.inf, -math.inf, 10**9, 10**30, 2**63, -(10**9),
    "", " ", "abc", "é", "💥", "a\n", "\x00", "x" * 5000, [], [1], [[]], {}, {"a": 1},
]


class Hung(BaseException):
    """Raised by `deadline` (not an Exception: nothing may swallow it)."""


@contextlib.contextmanager
def deadline(seconds):
    def expire(signum, frame):
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, names=(), require=(), limit=LIMIT_S):
    """"refused" (a ValueError whose message names one of `names` and all of `require`)
    or "accepted"; anything else (another exception, a hang) fails the test."""
    start = time.perf_counter()
    with deadline(limit):
        try:
            call()
        except ValueError as error:
            message = str(error)
            assert message and (not names or any(name in message for name in names)), (names, message)
            assert all(text in message for text in require), (require, message)
            return "refused"
    assert time.perf_counter() - start < limit
    return "accepted"


def tiny_stage(name="base", seed=0):
    unet = DiffusionUNet(image_size=8, base_channels=4, channel_multipliers=(1,), num_res_blocks=1,
                         attention_resolutions=(), num_groups=4, image_channels=1, num_classes=2)
    randomize_weights(unet, seed=seed, scale=0.1)
    return DiffusionModel(unet, GaussianDiffusion(10, "cosine"), name=name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A weightless stage preset and a one-stage cascade preset, to copy and break."""
    root = tmp_path_factory.mktemp("saved")
    stage = tiny_stage()
    stage.save_to_preset(root / "stage", include_weights=False)
    CascadedDiffusionPipeline([stage]).save_to_preset(root / "cascade", include_weights=False)
    return root


def copy(saved, kind, tmp_path):
    return Path(shutil.copytree(saved / kind, tmp_path / kind))


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def load_stage(folder):
    return DiffusionModel.from_preset(folder, load_weights=False)


# 1. Hub handles and revisions ----------------------------------------------------------------


@pytest.mark.parametrize("handle", ["hf://owner/repo\n", "hf://owner\n/repo", "hf://owner/repo/stage\n",
                                    "hf://owner/repo\t", "hf://ow\x00ner/repo", "hf://owner/repo/st\x7fage",
                                    "hf://owner/" + "r" * 97, "hf://owner/repo@v1\n"])
def test_handles_with_control_characters_or_too_long_are_refused(handle):
    with pytest.raises(ValueError, match="Hub handles take letters, digits"):
        presets.parse_hf_handle(handle)


@pytest.mark.parametrize("revision", ["/etc/passwd", "../../x", "a/../../b", "..", "main\n", "refs//x", "/main",
                                      "main/", "v1 .0", "", "r" * 256, 7, b"main", ["main"]])
def test_revisions_that_are_paths_or_not_names_are_refused(revision):
    with pytest.raises(ValueError, match=r"`revision` must be a branch, tag or commit"):
        presets.parse_hf_handle("hf://nobody/nothing", revision)


def test_revisions_take_branches_tags_commits_and_refs():
    for revision in ["main", "v1.0", "refs/pr/1", "feature/x", "a" * 40]:
        assert presets.parse_hf_handle("hf://me/repo", revision)[2] == revision


def test_a_path_revision_cannot_load_a_local_folder_through_the_cache(saved, tmp_path, monkeypatch):
    # Before: the offline cache lookup joined the revision to a cache path, so an absolute
    # revision read a file of the caller's choosing and loaded any folder as hf://nobody/nothing.
    cache = tmp_path / "cache"
    (cache / "models--nobody--nothing" / "refs").mkdir(parents=True)
    ref = tmp_path / "ref"
    ref.write_text(str(saved / "stage"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision in [str(ref), "../../../" + str(ref).lstrip("/")]:
        with pytest.raises(ValueError, match="`revision` must be a branch, tag or commit"):
            DiffusionModel.from_preset("hf://nobody/nothing", revision=revision, load_weights=False)


# 2. Loading untrusted presets -----------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("[]", "must hold a JSON object. Received: list"),
    ('"config"', "must hold a JSON object. Received: str"),
    ("[" * 5000 + "]" * 5000, "not valid JSON: nested too deeply|nests objects and lists at most"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nests objects and lists at most 32 deep"),
    ('{"a": NaN}', "not valid JSON: NaN is not a JSON number"),
    ('{"a": 1e999}', "not valid JSON: 1e999 is too large"),
    ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
    ("", "not valid JSON"),
    ('{"a": 1', "not valid JSON"),
])
def test_malformed_json_is_a_clear_error(saved, tmp_path, text, message):
    folder = copy(saved, "stage", tmp_path)
    for name in ("config.json", "metadata.json"):
        original = (folder / name).read_text()
        (folder / name).write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_stage(folder)
        assert name in str(info.value)
        (folder / name).write_text(original)


def test_files_that_are_not_small_regular_utf8_files_are_refused(saved, tmp_path):
    folder = copy(saved, "stage", tmp_path)
    (folder / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_stage(folder)
    (folder / "config.json").write_text(json.dumps({"padding": "x" * (1 << 20)}))
    with pytest.raises(ValueError, match=r"must hold at most 1,048,576 bytes .*LIMITS\['json_bytes'\]"):
        load_stage(folder)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")  # reading a pipe would block forever
    with deadline(LIMIT_S), pytest.raises(ValueError, match="must be a regular file .* special file"):
        load_stage(folder)
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    with pytest.raises(ValueError, match="must be a regular file .* Received: a folder"):
        load_stage(folder)


@pytest.mark.parametrize("path, value, message", [
    (("config",), [], "`config` must be an object"),
    (("config", "unet"), [1], "`config.unet` must describe a keras_cdm DiffusionUNet"),
    (("config", "diffusion", "config"), "x", r"`config.diffusion`: `config` must be an object"),
    (("config", "augmentation"), {"class_name": "Lambda"}, "`config.augmentation` must describe"),
    (("config", "unet", "compile_config"), {"optimizer": "adam"}, "`compile_config` must be empty"),
    (("config", "unet", "build_config"), {"input_shape": [10**12]}, "`build_config` must be null or"),
    (("config", "unet", "module"), "os", "with a keras_cdm `module`"),
    (("config", "unet", "config", "kernel"), 3, r"`config.unet`: The config of a DiffusionUNet takes the keys .*"
                                                r"unknown keys \['kernel'\]"),
    (("config", "diffusion", "config", "num_timesteps"), "10", "`num_timesteps` must be a positive integer"),
    (("config", "seed"), -1, r"`seed` must be None or an integer in \[0, 2\*\*32\)"),
    (("config", "random_flip"), "yes", "`random_flip` must be True or False"),
])
def test_config_values_of_the_wrong_type_name_the_file_and_the_key(saved, tmp_path, path, value, message):
    folder = copy(saved, "stage", tmp_path)

    def change(config):
        for key in path[:-1]:
            config = config[key]
        config[path[-1]] = value

    edit(folder / "config.json", change)
    with pytest.raises(ValueError, match=message) as info:
        load_stage(folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("key, value, message", [
    ("parameter_count", "12", "`parameter_count` must be an integer >= 0"),
    ("parameter_count", -5, "`parameter_count` must be an integer >= 0"),
    ("weights", ["model.weights.h5"], "`weights` must be null or a file name"),
    ("weights", "../../etc/passwd", "`weights` must be null or a file name"),
    ("weights_sha256", 5, "`weights_sha256` must be null or 64 lowercase hex digits"),
    ("description", {"text": "x"}, "`description` must be a string"),
])
def test_metadata_fields_of_the_wrong_type_are_refused(saved, tmp_path, key, value, message):
    folder = copy(saved, "stage", tmp_path)
    edit(folder / "metadata.json", lambda metadata: metadata.update({key: value}))
    with pytest.raises(ValueError, match=message) as info:
        load_stage(folder)
    assert "metadata.json" in str(info.value)


ABSURD = [
    (("diffusion", "config", "num_timesteps"), 10**9, "num_timesteps", "num_timesteps"),
    (("diffusion", "config", "num_timesteps"), 20_000_000, "num_timesteps", "num_timesteps"),
    (("unet", "config", "image_size"), 10**6, "image_size", "image_size"),
    (("unet", "config", "base_channels"), 10**6, "base_channels", "channels"),
    (("unet", "config", "channel_multipliers"), [1] * 1000, "channel_multipliers", "levels"),
    (("unet", "config", "channel_multipliers"), [10**6], "channels", "channels"),
    (("unet", "config", "num_res_blocks"), 10**6, "num_res_blocks", "num_res_blocks"),
    (("unet", "config", "num_classes"), 10**9, "num_classes", "num_classes"),
    (("unet", "config", "image_channels"), 10**5, "image_channels", "image_channels"),
    (("unet", "config", "num_heads"), 10**7, "num_heads", "num_heads"),
    (("unet", "config", "noise_level_scale"), 1e300, "noise_level_scale", None),
    (("unet", "config", "base_channels"), 4096, "parameters", "parameters"),  # 4096 wide: 3.6e9 weights
]


@pytest.mark.parametrize("path, value, key, limit", ABSURD)
def test_absurd_sizes_are_refused_before_anything_is_built(saved, tmp_path, path, value, key, limit):
    folder = copy(saved, "stage", tmp_path)

    def change(config):
        part = config["config"]
        for name in path[:-1]:
            part = part[name]
        part[path[-1]] = value
        if path[-1] == "base_channels" and value == 4096:
            part["channel_multipliers"], part["num_res_blocks"] = [1, 2, 2], 4

    edit(folder / "config.json", change)
    start = time.perf_counter()
    with deadline(LIMIT_S), pytest.raises(ValueError, match=key) as info:
        load_stage(folder)
    assert time.perf_counter() - start < 5
    assert "config.json" in str(info.value) and f"`config.{path[0]}`" in str(info.value)
    if limit is not None:
        assert f"LIMITS['{limit}']" in str(info.value)


def test_absurd_sizes_elsewhere_are_refused_too(saved, tmp_path):
    folder = copy(saved, "cascade", tmp_path)
    edit(folder / "config.json", lambda c: c["config"].update(stages=["base"] * 100))
    with pytest.raises(ValueError, match=r"`config.stages` must be a list of 1 to 32 stage subfolder names"):
        CascadedDiffusionPipeline.from_preset(folder, load_weights=False)
    from keras_cdm.conditioning import BlurConditioningAugmentation, GaussianConditioningAugmentation

    with pytest.raises(ValueError, match=r"`num_timesteps` must be a positive integer <= 100000"):
        GaussianConditioningAugmentation(max_level=5, num_timesteps=10**9)
    with pytest.raises(ValueError, match=r"`kernel_size` must be a positive integer <= 63"):
        BlurConditioningAugmentation(kernel_size=10**9 + 1)


def test_limits_can_be_raised(saved, tmp_path, monkeypatch):
    folder = copy(saved, "stage", tmp_path)
    edit(folder / "config.json", lambda c: c["config"]["diffusion"]["config"].update(num_timesteps=200_000))
    with pytest.raises(ValueError, match="num_timesteps"):
        load_stage(folder)
    monkeypatch.setitem(presets.LIMITS, "num_timesteps", 300_000)
    assert load_stage(folder).diffusion.num_timesteps == 200_000


def test_the_cli_reports_a_malformed_preset_without_a_traceback(saved, tmp_path, capsys):
    folder = copy(saved, "cascade", tmp_path)
    (folder / "base" / "config.json").write_text("[" * 10_000)
    with pytest.raises(SystemExit) as info:
        cli_main(["sample", "--preset", str(folder), "--labels", "0", "--out", str(tmp_path / "x.png")])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("keras-cdm: error:") and "config.json is not valid JSON" in error
    assert "Traceback" not in error


# 3. Saving ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my stage", "étage", "-lead", ".hidden", "a..b", "stage\n", "s" * 97])
def test_stage_names_that_could_not_be_loaded_are_refused_at_save_time(name, tmp_path):
    stage = tiny_stage(name)
    with pytest.raises(ValueError, match="A stage subfolder name takes letters, digits"):
        CascadedDiffusionPipeline([stage]).save_to_preset(tmp_path / "cascade")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary folder


def test_overwrite_replaces_preset_folders_only(saved, tmp_path):
    stage = tiny_stage()
    file = tmp_path / "file"
    file.write_text("my notes")
    with pytest.raises(ValueError, match="is a file, not a preset folder"):
        stage.save_to_preset(file, overwrite=True)
    assert file.read_text() == "my notes"
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a folder that holds no preset"):
        stage.save_to_preset(work, overwrite=True)
    assert (work / "src").is_dir()
    (tmp_path / "empty").mkdir()
    stage.save_to_preset(tmp_path / "empty", overwrite=True, include_weights=False)
    assert (tmp_path / "empty" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "work"]


def test_overwrite_through_a_symlink_replaces_its_target(saved, tmp_path):
    target = copy(saved, "stage", tmp_path)
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        tiny_stage().save_to_preset(link)
    other = tiny_stage("other", seed=1)
    assert other.save_to_preset(link, overwrite=True) == link
    assert link.is_symlink() and link.resolve() == target.resolve()
    loaded = DiffusionModel.from_preset(link)
    assert loaded.name == "other"
    np.testing.assert_array_equal(loaded.unet.get_weights()[0], other.unet.get_weights()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "stage"]


_KILLER = """
import os, shutil, signal, sys, types
from pathlib import Path

package = types.ModuleType("keras_cdm")  # the file helpers alone: no Keras import
package.__path__ = [sys.argv[1]]
sys.modules["keras_cdm"] = package
from keras_cdm import _files

folder, source, point = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "between_renames":  # a file system without RENAME_EXCHANGE: two renames
    _files.exchange = lambda a, b: False
    rename = Path.rename

    def rename_then_die(self, target):
        result = rename(self, target)
        if ".old-" in Path(target).name:  # the old preset is moved aside, the new one not yet in place
            die()
        return result

    Path.rename = rename_then_die
else:  # "after_exchange": swapped, the old preset not yet deleted
    exchange = _files.exchange
    _files.exchange = lambda a, b: exchange(a, b) and die()
_files.replace_folder(folder, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
"""


@pytest.mark.parametrize("point", ["between_renames", "after_exchange"])
def test_a_save_killed_during_the_swap_leaves_a_loadable_preset(point, tmp_path):
    old, new = tiny_stage("old", seed=1), tiny_stage("new", seed=2)
    folder = old.save_to_preset(tmp_path / "preset")
    source = new.save_to_preset(tmp_path / "source")
    done = subprocess.run([sys.executable, "-c", _KILLER, str(PACKAGE), str(folder), str(source), point],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    siblings = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if p.name.startswith(".preset."))
    if point == "between_renames":
        assert not folder.exists() and siblings == [".preset.old", ".preset.tmp"]  # the exact point
        expected = old  # the next load puts the moved-aside preset back
    else:
        assert folder.is_dir() and siblings == [".preset.tmp"]  # the tmp name now holds the old preset
        expected = new
    loaded = DiffusionModel.from_preset(folder)
    assert loaded.name == expected.name
    np.testing.assert_array_equal(loaded.unet.get_weights()[0], expected.unet.get_weights()[0])
    new.save_to_preset(folder, overwrite=True)  # the next save removes what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset", "source"]
    assert DiffusionModel.from_preset(folder).name == "new"


def test_swaps_are_atomic_where_the_system_can(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not _files.exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: swaps use two renames and recovery")
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


# Fuzz: a few hundred bad values through every entry point ------------------------------------


STAGE_KEYS = {
    "unet": ["image_size", "base_channels", "channel_multipliers", "num_res_blocks", "attention_resolutions",
             "num_heads", "dropout", "num_classes", "learned_variance", "image_channels", "low_res_size",
             "low_res_interpolation", "augmentation_level_embedding", "conditioning", "noise_level_scale",
             "use_scale_shift_norm", "resblock_updown", "conv_resample", "num_groups", "dtype"],
    "diffusion": ["num_timesteps", "schedule", "beta_start", "beta_end", "section_counts", "prediction",
                  "variance", "loss", "conditioning"],
    None: ["random_flip", "low_res_interpolation", "seed", "unet", "diffusion", "augmentation"],
}


def _cases(keys, per_key=8):
    """(key, value) pairs: every key, each with `per_key` of BAD_VALUES in turn."""
    cases = []
    for i, key in enumerate(keys):
        cases += [(key, BAD_VALUES[(i * per_key + j) % len(BAD_VALUES)]) for j in range(per_key)]
    return cases


def test_fuzz_config_and_metadata_values(saved, tmp_path):
    folder = copy(saved, "stage", tmp_path)
    original = {name: (folder / name).read_text() for name in ("config.json", "metadata.json")}
    counts = {"refused": 0, "accepted": 0}
    for part, keys in STAGE_KEYS.items():
        for key, value in _cases(keys):
            config = json.loads(original["config.json"])
            target = config["config"] if part is None else config["config"][part]["config"]
            target[key] = value
            (folder / "config.json").write_text(json.dumps(config))
            where = "`config`" if part is None else f"`config.{part}`"
            names = (where, f"`config.{key}`", "is not valid JSON")  # NaN and inf are not JSON
            counts[outcome(lambda: load_stage(folder), names=names, require=(str(folder / "config.json"),))] += 1
    (folder / "config.json").write_text(original["config.json"])
    for key, value in _cases(["parameter_count", "weights", "weights_sha256", "description", "image_size"], 10):
        metadata = json.loads(original["metadata.json"])
        metadata[key] = value
        (folder / "metadata.json").write_text(json.dumps(metadata))
        counts[outcome(lambda: load_stage(folder), names=(f"`{key}`", "is not valid JSON"),
                       require=(str(folder / "metadata.json"),))] += 1
    print(f"config/metadata fuzz: {counts}")
    assert counts["refused"] >= 0.9 * sum(counts.values())


def test_fuzz_cascade_configs(saved, tmp_path):
    folder = copy(saved, "cascade", tmp_path)
    original = (folder / "config.json").read_text()
    counts = {"refused": 0, "accepted": 0}
    cases = _cases(["stages", "sampling", "description"], 9) + [("stage", v) for v in BAD_VALUES[::3]]
    for key, value in cases:
        config = json.loads(original)
        if key == "stage":
            config["config"]["stages"] = [value]
        else:
            config["config"][key] = value
        (folder / "config.json").write_text(json.dumps(config))
        load = lambda: CascadedDiffusionPipeline.from_preset(folder, load_weights=False)  # noqa: E731
        counts[outcome(load, names=("config.json", "stage subfolder name"))] += 1
    print(f"cascade fuzz: {counts}")
    assert counts["refused"] >= 0.9 * sum(counts.values())


def test_fuzz_handles_revisions_and_preset_arguments(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network; a valid handle ends at the empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    counts = {"refused": 0, "accepted": 0}
    texts = [v for v in BAD_VALUES if isinstance(v, str)]
    for value in BAD_VALUES:
        handles = [value] + ([f"hf://{value}/repo", f"hf://owner/{value}", f"hf://owner/repo/{value}",
                              f"hf://owner/repo@{value}", f"{value}/not/a/folder"] if value in texts else [])
        for handle in handles:
            counts[outcome(lambda: DiffusionModel.from_preset(handle, load_weights=False))] += 1
        counts[outcome(lambda: DiffusionModel.from_preset("hf://owner/repo", revision=value),
                       names=("revision", "not in the local Hugging Face cache"))] += 1
        if not isinstance(value, bool):
            counts[outcome(lambda: CascadedDiffusionPipeline.from_preset(saved / "cascade", load_weights=value),
                           names=("load_weights",))] += 1
    print(f"handle/revision fuzz: {counts}")
    assert counts["accepted"] == 0


def test_fuzz_save_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where relative folders (" ", "é", ...) are written
    stage = tiny_stage()
    pipeline = CascadedDiffusionPipeline([stage])
    out = tmp_path / "out"
    out.mkdir()
    counts = {"refused": 0, "accepted": 0}
    for value in BAD_VALUES:
        calls = [
            (lambda: stage.save_to_preset(value), ("folder", "stage subfolder")),
            (lambda: stage.save_to_preset(out / "a", overwrite=value), ("overwrite",)),
            (lambda: stage.save_to_preset(out / "b", include_weights=value), ("include_weights",)),
            (lambda: stage.save_to_preset(out / "c", description=value, include_weights=False), ("description",)),
            (lambda: pipeline.save_to_preset(out / "d", include_weights=value), ("include_weights",)),
        ]
        for call, names in calls:
            before = sorted(p.name for p in out.iterdir())
            result = outcome(call, names=names)
            counts[result] += 1
            if result == "refused":
                assert sorted(p.name for p in out.iterdir()) == before  # nothing written
            shutil.rmtree(out)
            out.mkdir()
    for name in ["my stage", "étage", "-lead", ".hidden", "a\n", "\x00", "x" * 200, "..", "a/b"]:
        try:
            renamed = DiffusionModel(stage.unet, stage.diffusion, name=name)
        except ValueError:  # Keras refuses some names itself
            counts["refused"] += 1
            continue
        counts[outcome(lambda: CascadedDiffusionPipeline([renamed]).save_to_preset(out / "e"),
                       names=("stage subfolder name",))] += 1
        assert not list(out.iterdir())
    print(f"save fuzz: {counts}")
    assert counts["refused"] >= 0.8 * sum(counts.values())
