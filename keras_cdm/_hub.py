"""The Hugging Face Hub side of presets: `hf://` handles, revisions, settings, downloads.

Handles and revisions are checked before any request (they become cache paths and
URLs). Settings are read from the environment at call time (huggingface_hub reads
its own at import). Downloads have timeouts: huggingface_hub sends its API calls
(repo info, file listing) with none, so an endpoint that accepts connections and
never answers would hang; while a preset downloads, a request hook gives every
request the timeouts of HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT (default 10 s),
and a failure names the endpoint.
"""

import math
import os
import threading
from pathlib import Path

from keras_cdm._validation import LIMITS, is_name, name_rule, shown

HF_PREFIX = "hf://"
DEFAULT_TIMEOUT = 10.0  # seconds, when HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT are not set


# -- handles ----------------------------------------------------------------------------------


def check_revision(revision):
    """None, or a Hub branch, tag or commit: names as in handles, joined by '/' (e.g.
    'main', 'v1.0', 'refs/pr/1', a commit hash); never a path."""
    limit = LIMITS["revision_length"]
    if revision is not None and not (isinstance(revision, str) and len(revision) <= limit
                                     and all(is_name(part, limit) for part in revision.split("/"))):
        raise ValueError(f"`revision` must be a branch, tag or commit of the Hub repository: '/'-separated names of "
                         f"{name_rule(limit)}, at most {limit} characters in all. Received: revision={shown(revision)}")
    return revision


def parse_hf_handle(handle, revision=None):
    """`hf://owner/repo[@revision][/subfolder...]` -> (repo_id, subfolder or None, revision)."""
    usage = "A Hub preset is 'hf://owner/repo[@revision][/subfolder]'."
    if not isinstance(handle, str) or not handle.startswith(HF_PREFIX):
        raise ValueError(f"{usage} Received: {shown(handle)}")
    parts = handle[len(HF_PREFIX):].split("/")
    if len(parts) < 2:
        raise ValueError(f"{usage} Received: {shown(handle)}")
    owner, repo, sub = parts[0], parts[1], parts[2:]
    pinned = None
    if "@" in repo:
        repo, pinned = repo.split("@", 1)
    for part in [owner, repo, *sub] + ([pinned] if pinned is not None else []):
        if not is_name(part):
            raise ValueError(f"Hub handles take letters, digits, '_', '-' and '.' in each part ({name_rule()}), "
                             f"with no empty part and no absolute path. Received: {shown(handle)}")
    check_revision(revision)
    if pinned is not None and revision is not None and pinned != revision:
        raise ValueError(f"Two different revisions given. Received: handle pins {pinned!r}, revision={revision!r}")
    return f"{owner}/{repo}", "/".join(sub) or None, pinned or revision


# -- settings -----------------------------------------------------------------------------------


def settings():
    """Hub settings read at call time (huggingface_hub reads its env vars at import)."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    return {
        "endpoint": (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"),
        "local_files_only": offline or constants.is_offline_mode(),
        "cache_dir": cache,
    }


def timeouts():
    """(metadata, download) timeouts in seconds, from HF_HUB_ETAG_TIMEOUT and
    HF_HUB_DOWNLOAD_TIMEOUT (default `DEFAULT_TIMEOUT`), read at call time."""
    found = []
    for variable in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        text = os.environ.get(variable, "").strip()
        try:
            seconds = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:
            raise ValueError(f"`{variable}` must be a positive number of seconds. Received: {variable}={text!r}")
        found.append(seconds)
    return tuple(found)


# -- timeouts on huggingface_hub's requests -------------------------------------------------------

_ACTIVE = []  # (metadata, download) seconds of each download in progress, latest last
_LOCK = threading.Lock()


def _apply_timeouts(request):
    """huggingface_hub request hook: while a preset downloads, the connection (and every
    read of an API call) waits at most the metadata timeout; file downloads read with
    the download timeout. Outside downloads it changes nothing."""
    timeout = request.extensions.get("timeout")
    if not _ACTIVE or not isinstance(timeout, dict):
        return
    metadata, download = _ACTIVE[-1]
    timeout = {key: timeout.get(key) or metadata for key in ("connect", "read", "write", "pool")}
    if request.method == "GET" and "/resolve/" in request.url.path:
        timeout["read"] = download
    request.extensions["timeout"] = timeout


class _Timeouts:
    """Context: `timeouts()` on the requests of huggingface_hub's shared session."""

    def __enter__(self):
        from huggingface_hub.utils import get_session

        self.timeouts = timeouts()
        hooks = get_session().event_hooks["request"]  # a fresh session after a fork: hook it again
        with _LOCK:
            if _apply_timeouts not in hooks:
                hooks.append(_apply_timeouts)
            _ACTIVE.append(self.timeouts)
        return self.timeouts

    def __exit__(self, *exc_info):
        with _LOCK:
            _ACTIVE.remove(self.timeouts)


def network_problem(error, endpoint, limits=None):
    """Why the Hub at `endpoint` could not be used, from the exceptions chained in
    `error` (by class name: whichever httpx huggingface_hub uses); None if not the network.
    `limits`: the (metadata, download) timeouts in force, or None (huggingface_hub's own)."""
    for _ in range(20):
        if error is None:
            return None
        names = {cls.__name__ for cls in type(error).__mro__}
        if "TimeoutException" in names:
            if limits is None:
                return f"the Hub at {endpoint} did not answer in time ({type(error).__name__})"
            return (f"the Hub at {endpoint} did not answer within {limits[0]:g} s (HF_HUB_ETAG_TIMEOUT; "
                    f"file downloads: {limits[1]:g} s, HF_HUB_DOWNLOAD_TIMEOUT)")
        if names & {"ConnectError", "NetworkError", "TransportError", "ProxyError"}:
            return f"the Hub cannot be reached at {endpoint} ({type(error).__name__}: {error})"
        status = getattr(getattr(error, "response", None), "status_code", None)
        if "HfHubHTTPError" in names and isinstance(status, int) and status >= 500:
            return f"the Hub at {endpoint} answered with an error ({status})"
        error = error.__cause__ or error.__context__
    return None


# -- downloads -----------------------------------------------------------------------------------


def download(handle, revision=None):
    """Downloads (or finds in the cache) `handle`; returns the local folder of its repo
    (or of its subfolder). Every failure is a ValueError that says why."""
    import huggingface_hub
    from huggingface_hub import errors

    repo_id, sub, revision = parse_hf_handle(handle, revision)
    hub = settings()
    at = "" if revision is None else f" at revision {revision!r}"
    with _Timeouts() as limits:
        try:
            root = huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=None if sub is None else [f"{sub}/*"],
                etag_timeout=limits[0], **hub)
        except errors.RepositoryNotFoundError as error:
            raise ValueError(f"Hub repository {repo_id!r} not found at {hub['endpoint']} (or private without a "
                             f"token). Received: {handle!r}") from error
        except errors.RevisionNotFoundError as error:
            raise ValueError(f"Revision {revision!r} not found in Hub repository {repo_id!r}.") from error
        except errors.LocalEntryNotFoundError as error:
            where = "offline mode (HF_HUB_OFFLINE) is on" if hub["local_files_only"] else (
                network_problem(error, hub["endpoint"], limits) or f"the Hub cannot be reached at {hub['endpoint']}")
            raise ValueError(f"Preset {handle!r}{at} is not in the local Hugging Face cache and {where}. Download "
                             "it once online, or point `preset` at a local folder.") from error
        except Exception as error:  # the network failed half-way (timeouts, resets, 5xx)
            problem = network_problem(error, hub["endpoint"], limits)
            if problem is None:
                raise
            raise ValueError(f"Could not download preset {handle!r}{at}: {problem}.") from error
    return Path(root) if sub is None else Path(root) / sub
