"""The loopback Hub of keras_cdm/testing/hub_server.py, driven end to end by the real huggingface_hub client."""

import importlib
import random
import re
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from keras_cdm.testing.hub_server import HubServer

pytestmark = pytest.mark.backend_neutral

# An explicit token everywhere: with token=None the client would look for a stored
# login (and may even refresh it over the network).
TOKEN = "test-token"
REPO = "tester/tiny-model"
WEIGHTS = "weights/model.weights.h5"


@pytest.fixture(scope="module", autouse=True)
def _xet_files_in_tmp(tmp_path_factory):
    """upload_folder opens an hf_xet session even when nothing goes through Xet, and hf_xet
    writes its logs under HF_XET_CACHE (default ~/.cache/huggingface/xet): keep them here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_XET_CACHE", str(tmp_path_factory.mktemp("xet")))
        patch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


def write_files(folder, files):
    for name, data in files.items():
        path = Path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def read_files(folder):
    """{relative posix path: bytes} of every file under `folder` (symlinks followed)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def model_files(config=b'{"units": 4}'):
    """A nested folder with a ~5 MB binary file (all 256 byte values, not UTF-8)."""
    return {
        "config.json": config,
        WEIGHTS: random.Random(0).randbytes(5 * 1024 * 1024),
        "weights/extra/notes.txt": b"nested two levels deep\n",
    }


def download(hub, cache_dir, **kwargs):
    return snapshot_download(REPO, cache_dir=cache_dir, endpoint=hub.endpoint, token=TOKEN, **kwargs)


@pytest.fixture
def uploaded(hub, api, tmp_path):
    """REPO holding model_files() in one commit; returns (files, commit sha)."""
    files = model_files()
    api.create_repo(REPO, exist_ok=True)
    info = api.upload_folder(repo_id=REPO, folder_path=write_files(tmp_path / "v1", files), commit_message="v1")
    return files, info.oid


def test_create_repo_and_conflict(hub, api):
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    assert len(hub.commits(REPO)) == 1  # the initial commit: "main" exists right away
    api.create_repo(REPO, exist_ok=True)  # no error, no new commit
    assert len(hub.commits(REPO)) == 1
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409

    api.create_repo("tester/secret", private=True, exist_ok=True)
    assert api.repo_info("tester/secret").private is True
    assert api.repo_info(REPO).private is False


def test_upload_folder_commits_inline_and_downloads_same_bytes(hub, uploaded, tmp_path):
    files, sha = uploaded
    assert re.fullmatch(r"[0-9a-f]{40}", sha) and hub.commits(REPO)[-1] == sha
    # Regular upload mode: contents travel in the commit payload, no LFS / Xet transfer.
    paths = [path for method, path in hub.requests if method == "POST"]
    assert f"/api/models/{REPO}/preupload/main" in paths and f"/api/models/{REPO}/commit/main" in paths
    assert not [path for _, path in hub.requests if "xet" in path or "lfs" in path]

    folder = download(hub, tmp_path / "cache")
    assert read_files(folder) == files
    storage = tmp_path / "cache" / "models--tester--tiny-model"
    assert Path(folder) == storage / "snapshots" / sha
    assert (storage / "refs" / "main").read_text() == sha


def test_allow_patterns_limits_download_to_subfolder(hub, uploaded, tmp_path):
    files, _ = uploaded
    folder = download(hub, tmp_path / "cache", allow_patterns=["weights/*"])
    assert read_files(folder) == {name: data for name, data in files.items() if name.startswith("weights/")}
    assert not [path for _, path in hub.requests if path.endswith("/config.json")]


def test_old_commit_keeps_old_bytes(hub, api, uploaded, tmp_path):
    files, first = uploaded
    new_files = model_files(config=b'{"units": 8}')
    api.upload_folder(repo_id=REPO, folder_path=write_files(tmp_path / "v2", new_files), commit_message="v2")
    second = hub.commits(REPO)[-1]
    assert hub.commits(REPO)[-2:] == [first, second] and first != second

    assert read_files(download(hub, tmp_path / "cache", revision=first)) == files
    assert read_files(download(hub, tmp_path / "cache", revision="main")) == new_files
    assert read_files(download(hub, tmp_path / "cache")) == new_files
    kwargs = dict(cache_dir=tmp_path / "other-cache", endpoint=hub.endpoint, token=TOKEN)
    assert Path(hf_hub_download(REPO, "config.json", revision=first, **kwargs)).read_bytes() == files["config.json"]
    assert Path(hf_hub_download(REPO, "config.json", **kwargs)).read_bytes() == new_files["config.json"]


def test_unchanged_upload_makes_no_commit(hub, api, uploaded, tmp_path):
    files, sha = uploaded
    info = api.upload_folder(repo_id=REPO, folder_path=write_files(tmp_path / "again", files))
    assert info.oid == sha and hub.commits(REPO)[-1] == sha


def test_upload_file_and_hf_hub_download(hub, api, uploaded, tmp_path):
    files, _ = uploaded
    api.upload_file(path_or_fileobj=b"# Tiny\n", path_in_repo="docs/README.txt", repo_id=REPO)
    sha = hub.commits(REPO)[-1]
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, endpoint=hub.endpoint, token=TOKEN)

    path = hf_hub_download(REPO, "docs/README.txt", **kwargs)
    assert Path(path).read_bytes() == b"# Tiny\n"
    path = hf_hub_download(REPO, WEIGHTS, revision="main", **kwargs)
    assert Path(path) == cache / "models--tester--tiny-model" / "snapshots" / sha / WEIGHTS
    assert Path(path).read_bytes() == files[WEIGHTS]
    assert ("HEAD", f"/{REPO}/resolve/main/{WEIGHTS}") in hub.requests


def test_cached_files_are_served_after_stop(hub, uploaded, tmp_path):
    files, sha = uploaded
    cache = tmp_path / "cache"
    folder = download(hub, cache)
    hub.stop()
    seen = len(hub.requests)

    offline = dict(cache_dir=cache, endpoint=hub.endpoint, token=TOKEN, local_files_only=True)
    assert snapshot_download(REPO, **offline) == folder
    assert read_files(snapshot_download(REPO, revision=sha, **offline)) == files
    assert Path(hf_hub_download(REPO, WEIGHTS, **offline)).read_bytes() == files[WEIGHTS]
    # Without local_files_only the client finds the server gone and falls back to refs/main.
    online = dict(offline, local_files_only=False)
    assert Path(hf_hub_download(REPO, "config.json", **online)).read_bytes() == files["config.json"]
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "never-downloaded.txt", **offline)
    assert len(hub.requests) == seen


def test_root_folder_holds_the_file_contents(tmp_path):
    with HubServer(root=tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        api.upload_file(path_or_fileobj=b"stored on disk", path_in_repo="a.txt", repo_id=REPO)
        path = hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=TOKEN)
    assert Path(path).read_bytes() == b"stored on disk"
    assert [p.read_bytes() for p in (tmp_path / "hub" / "blobs").iterdir()] == [b"stored on disk"]


def test_unknown_repo_raises_repository_not_found(hub, api, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        download(hub, tmp_path / "cache")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        api.upload_folder(repo_id=REPO, folder_path=write_files(tmp_path / "src", {"a.txt": b"a"}))


def test_unknown_file_raises_entry_not_found(hub, uploaded, tmp_path):
    with pytest.raises(RemoteEntryNotFoundError) as missing:
        hf_hub_download(REPO, "missing.bin", cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=TOKEN)
    assert isinstance(missing.value, EntryNotFoundError)


@pytest.mark.parametrize("revision", ["no-such-branch", "0" * 40])
def test_unknown_revision_raises_revision_not_found(hub, uploaded, tmp_path, revision):
    with pytest.raises(RevisionNotFoundError):
        download(hub, tmp_path / "cache", revision=revision)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            REPO, "config.json", revision=revision, cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=TOKEN
        )


def test_a_stalling_server_accepts_requests_and_never_answers(tmp_path):
    from huggingface_hub.utils import get_session

    httpx = importlib.import_module(type(get_session()).__module__.split(".")[0])  # huggingface_hub's httpx

    with HubServer(stall=lambda method, path: path.startswith("/api/")) as hub:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{hub.endpoint}/api/models/{REPO}", timeout=0.5)  # connected, then silence
        assert hub.stalled == [("GET", f"/api/models/{REPO}")]
        with pytest.raises(RepositoryNotFoundError):  # the requests it lets through are answered
            hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=TOKEN)
    started = time.perf_counter()
    hub.stop()  # idempotent, and stalled requests do not hold it up
    assert time.perf_counter() - started < 5
