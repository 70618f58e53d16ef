"""Presets on the Hugging Face Hub: upload -> download -> from_preset with the real
huggingface_hub client, against the loopback Hub of keras_cdm/testing/hub_server.py."""

import time
from pathlib import Path

import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, upload_preset
from keras_cdm.presets import parse_hf_handle
from keras_cdm.testing import tiny_cascade
from keras_cdm.testing.hub_server import HubServer

# Backend-independent logic (the pipeline itself is tested on both backends): run once.
pytestmark = pytest.mark.backend_neutral

LABELS = [2, 0]


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback Hub, with the client's endpoint, token and caches pointed at it and at tmp_path."""
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", "test-token")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet-cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def test_upload_download_round_trip_reproduces_the_images(cascade, hub, tmp_path, monkeypatch):
    expected = cascade.generate(labels=LABELS, seed=4)
    folder = cascade.save_to_preset(tmp_path / "tiny")
    (folder / "README.md").unlink()  # upload_preset writes a model card when there is none
    url = upload_preset("hf://tester/tiny-cdm", folder, commit_message="first")
    assert "tester/tiny-cdm" in url and (folder / "README.md").is_file()
    assert "hf://tester/tiny-cdm" in (folder / "README.md").read_text()

    loaded = CascadedDiffusionPipeline.from_preset("hf://tester/tiny-cdm")
    np.testing.assert_array_equal(loaded.generate(labels=LABELS, seed=4), expected)
    assert loaded.sampling == cascade.sampling
    # One stage of the cascade, into an empty cache: only its subfolder is downloaded.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other-cache"))
    hub.requests.clear()
    stage = DiffusionModel.from_preset("hf://tester/tiny-cdm/sr16")
    assert stage.name == "sr16"
    downloaded = [path for _, path in hub.requests if "/resolve/" in path]
    assert downloaded and all("/sr16/" in path for path in downloaded)


def test_upload_fills_in_the_repository_of_the_saved_model_card(cascade, hub, tmp_path):
    folder = cascade.save_to_preset(tmp_path / "tiny")
    card = folder / "README.md"
    assert "hf://OWNER/REPO" in card.read_text()
    card.write_text(card.read_text() + "\n## Training data\n\nMy own.\n")  # the user's edits are kept
    upload_preset("hf://tester/carded/sub", folder)
    text = card.read_text()
    assert "OWNER/REPO" not in text and 'from_preset("hf://tester/carded/sub")' in text and "My own." in text


def test_pinned_revision_loads_the_old_commit(cascade, hub, tmp_path):
    folder = cascade.save_to_preset(tmp_path / "tiny")
    upload_preset("hf://tester/pinned", folder)
    first = hub.commits("tester/pinned")[-1]
    before = cascade.generate(labels=LABELS, seed=0)
    changed = tiny_cascade()
    changed.set_sampling("sr32", num_steps=3)
    changed.save_to_preset(tmp_path / "tiny", overwrite=True)
    upload_preset("hf://tester/pinned", tmp_path / "tiny")
    assert hub.commits("tester/pinned")[-1] != first

    latest = CascadedDiffusionPipeline.from_preset("hf://tester/pinned")
    assert latest.sampling[2]["num_steps"] == 3
    pinned = CascadedDiffusionPipeline.from_preset(f"hf://tester/pinned@{first}")
    assert pinned.sampling[2]["num_steps"] == 5
    np.testing.assert_array_equal(pinned.generate(labels=LABELS, seed=0), before)
    same = CascadedDiffusionPipeline.from_preset("hf://tester/pinned", revision=first)
    assert same.sampling == pinned.sampling


def test_offline_mode_uses_the_cache_and_fails_fast_otherwise(cascade, hub, tmp_path, monkeypatch):
    upload_preset("hf://tester/cached", cascade.save_to_preset(tmp_path / "tiny"))
    CascadedDiffusionPipeline.from_preset("hf://tester/cached")  # now in the cache
    hub.stop()
    with pytest.raises(ValueError, match="is not in the local Hugging Face cache and the Hub cannot be reached"):
        CascadedDiffusionPipeline.from_preset("hf://tester/never-downloaded")  # online, but the Hub is down
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert CascadedDiffusionPipeline.from_preset("hf://tester/cached").stage_names == ["base", "sr16", "sr32"]
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"'hf://tester/never-downloaded' is not in the local Hugging Face cache "
                                         r"and offline mode \(HF_HUB_OFFLINE\) is on"):
        CascadedDiffusionPipeline.from_preset("hf://tester/never-downloaded")
    assert time.perf_counter() - start < 5


def test_a_hub_that_never_answers_fails_fast_naming_the_endpoint(cascade, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", "test-token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    with HubServer(stall=lambda method, path: True) as silent:  # accepts connections, never answers
        monkeypatch.setenv("HF_ENDPOINT", silent.endpoint)
        start = time.perf_counter()
        with pytest.raises(ValueError, match=rf"'hf://x/y' is not in the local Hugging Face cache and the Hub at "
                                             rf"{silent.endpoint} did not answer within 1 s \(HF_HUB_ETAG_TIMEOUT"):
            CascadedDiffusionPipeline.from_preset("hf://x/y")
        assert time.perf_counter() - start < 10 and silent.stalled
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="`HF_HUB_ETAG_TIMEOUT` must be a positive number of seconds"):
        CascadedDiffusionPipeline.from_preset("hf://x/y")


def test_a_silent_hub_falls_back_to_the_cache(cascade, hub, tmp_path, monkeypatch):
    upload_preset("hf://tester/cached-stage", cascade.stages[0].save_to_preset(tmp_path / "b", include_weights=False))
    DiffusionModel.from_preset("hf://tester/cached-stage", load_weights=False)  # now in the cache
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    with HubServer(stall=lambda method, path: True) as silent:
        monkeypatch.setenv("HF_ENDPOINT", silent.endpoint)
        start = time.perf_counter()
        assert DiffusionModel.from_preset("hf://tester/cached-stage", load_weights=False).name == "base"
        assert time.perf_counter() - start < 10 and silent.stalled


def test_a_hub_that_stops_answering_during_downloads_fails_with_the_download_timeout(cascade, hub, tmp_path,
                                                                                      monkeypatch):
    upload_preset("hf://tester/slow", cascade.stages[0].save_to_preset(tmp_path / "base", include_weights=False))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.5")
    hub.stall = lambda method, path: method == "GET" and "/resolve/" in path  # metadata yes, bytes never
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"Could not download preset 'hf://tester/slow': the Hub at {hub.endpoint} "
                                         r"did not answer within 0.5 s .*file downloads: 0.5 s"):
        DiffusionModel.from_preset("hf://tester/slow", load_weights=False)
    assert time.perf_counter() - start < 30  # huggingface_hub retries a download 5 times with backoff


def test_timeouts_apply_to_preset_downloads_only(monkeypatch):
    from huggingface_hub.utils import get_session

    from keras_cdm import _hub

    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)  # the defaults: 10 s
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT", raising=False)

    request = get_session().build_request("GET", "http://127.0.0.1:1/api/models/x/y", timeout=None)
    _hub._apply_timeouts(request)
    assert request.extensions["timeout"]["read"] is None  # outside a download: huggingface_hub's own settings
    with _hub._Timeouts():
        _hub._apply_timeouts(request)
        assert request.extensions["timeout"] == {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0}
        download = get_session().build_request("GET", "http://127.0.0.1:1/x/y/resolve/main/a", timeout=3)
        _hub._apply_timeouts(download)
        assert download.extensions["timeout"]["connect"] == 3 and download.extensions["timeout"]["read"] == 10.0


def test_hub_errors_are_clear(hub):
    with pytest.raises(ValueError, match=rf"Hub repository 'tester/missing' not found at {hub.endpoint}"):
        CascadedDiffusionPipeline.from_preset("hf://tester/missing")
    HfApi = pytest.importorskip("huggingface_hub").HfApi
    HfApi(endpoint=hub.endpoint, token="test-token").create_repo("tester/empty")
    with pytest.raises(ValueError, match="Revision 'v9' not found in Hub repository 'tester/empty'"):
        CascadedDiffusionPipeline.from_preset("hf://tester/empty@v9")
    with pytest.raises(ValueError, match="holds no preset: no config.json in the repository"):
        CascadedDiffusionPipeline.from_preset("hf://tester/empty")


def test_upload_validates_the_folder_first(cascade, hub, tmp_path):
    folder = cascade.save_to_preset(tmp_path / "tiny")
    weights = folder / "sr32" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="is missing, corrupted or truncated"):
        upload_preset("hf://tester/broken", folder)
    with pytest.raises(ValueError, match="Preset folder not found"):
        upload_preset("hf://tester/broken", tmp_path / "nothing")
    with pytest.raises(ValueError, match="Upload to an 'hf://owner/repo"):
        upload_preset("tester/broken", folder)
    assert not any("/api/repos/create" in path for _, path in hub.requests)  # nothing was sent


@pytest.mark.parametrize(
    "handle",
    ["hf://tester", "hf://tester/../etc", "hf:///etc/passwd", "hf://tester/repo/../../x", "hf://te ster/repo",
     "hf://tester/repo@bad rev", "hf://tester/repo//stage", "hf://tester/repo\n", "hf://tester/repo/stage\n",
     "hf://tester/repo@main\n", "hf://tester/re\x00po", "hf://tester/repo@..", 7, None, "tester/repo"],
)
def test_odd_handles_are_rejected_before_any_request(handle):
    with pytest.raises(ValueError, match="hf://owner/repo|Hub handles take letters"):
        parse_hf_handle(handle)


def test_path_revisions_are_rejected_before_any_request(hub):
    for revision in ["/etc/passwd", "../../../etc", "main/../../x", "main\n"]:
        with pytest.raises(ValueError, match="`revision` must be a branch, tag or commit"):
            CascadedDiffusionPipeline.from_preset("hf://nobody/nothing", revision=revision)
    assert hub.requests == []


def test_handles_parse_into_repo_subfolder_and_revision():
    assert parse_hf_handle("hf://me/repo") == ("me/repo", None, None)
    assert parse_hf_handle("hf://me/repo@v1.0/stage_a") == ("me/repo", "stage_a", "v1.0")
    assert parse_hf_handle("hf://me/repo/stage", revision="abc") == ("me/repo", "stage", "abc")
    with pytest.raises(ValueError, match="Two different revisions"):
        parse_hf_handle("hf://me/repo@v1", revision="v2")


def test_hub_server_was_not_needed_for_local_loads(cascade, tmp_path):
    # No Hub settings at all: a local folder never touches huggingface_hub's network.
    folder = cascade.save_to_preset(tmp_path / "local")
    assert CascadedDiffusionPipeline.from_preset(Path(folder)).stage_names == ["base", "sr16", "sr32"]


def test_an_adapter_preset_of_a_hub_base_is_pinned_to_its_commit_and_shared(cascade, hub, tmp_path, monkeypatch):
    upload_preset("hf://tester/digits", cascade.save_to_preset(tmp_path / "tiny"))
    first = hub.commits("tester/digits")[-1]
    stage = DiffusionModel.from_preset("hf://tester/digits/base")
    stage.enable_lora(2, "convolutions")
    stage.compile(learning_rate=1e-2)
    rng = np.random.default_rng(0)
    stage.fit({"images": rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32"), "labels": rng.integers(0, 3, 8)},
              batch_size=8, epochs=1, verbose=0)
    folder = stage.save_to_preset(tmp_path / "adapter")
    config = (folder / "config.json").read_text()
    assert '"base": "hf://tester/digits/base"' in config and f'"revision": "{first}"' in config
    upload_preset("hf://tester/digits-adapter", folder)
    # The base repository moves on; the adapter still loads the commit it was trained on.
    changed = tiny_cascade()
    changed.stages[0].unet.get_layer("input_conv").bias.assign(np.ones(8, "float32"))
    upload_preset("hf://tester/digits", changed.save_to_preset(tmp_path / "tiny", overwrite=True))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "fresh-cache"))
    loaded = DiffusionModel.from_preset("hf://tester/digits-adapter")
    np.testing.assert_array_equal(loaded.generate(labels=LABELS, seed=1), stage.generate(labels=LABELS, seed=1))
    # An adapter naming a local folder as its base is refused before anything is uploaded.
    local = DiffusionModel.from_preset(tmp_path / "tiny" / "base")
    local.enable_lora(2)
    with pytest.raises(ValueError, match="others could not load it"):
        upload_preset("hf://tester/local-adapter", local.save_to_preset(tmp_path / "local_adapter"))
