"""Files a preset is made of: JSON read with bounds, folders replaced atomically.

`read_json` reads a small JSON object from a file that may come from anywhere: a
regular file of at most `LIMITS["json_bytes"]` bytes, UTF-8, objects and lists nested
at most `LIMITS["json_depth"]` deep, no NaN or Infinity, an object at the top.

`replace_folder` writes a folder next to its final place and swaps it in, so that a
reader always finds a complete folder: the old one or the new one. On Linux the swap
is one `renameat2(RENAME_EXCHANGE)`; elsewhere (or on file systems without it) it is
two renames, and a process killed between them leaves the old folder moved aside,
which `recover_folder` (run by every later load and save of that path) puts back.
Temporary siblings are named `.<name>.tmp-<pid>-<hex>` / `.<name>.old-<pid>-<hex>`:
a save removes those whose process is gone.
"""

import contextlib
import ctypes
import errno
import glob
import json
import math
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

from keras_cdm._validation import LIMITS, check_bool, shown

_SIBLING = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


# -- reading --------------------------------------------------------------------------------


def read_json(path, what="a JSON object"):
    """The object in the JSON file `path`; a ValueError (FileNotFoundError when it is
    missing) naming the file for anything else."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Not a preset folder: {path.name} is missing in {path.parent}")
    if not path.is_file():
        raise ValueError(f"{path} must be a regular file holding {what}. Received: a {_kind(path)}")
    size = path.stat().st_size
    if size > LIMITS["json_bytes"]:
        raise ValueError(f"{path} must hold at most {LIMITS['json_bytes']:,} bytes (the bound of "
                         f"keras_cdm.presets.LIMITS['json_bytes']). Received: {size:,} bytes")
    try:
        with open(path, "rb") as file:
            data = file.read(LIMITS["json_bytes"] + 1)
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, NaN, integers too long to read
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    depth = _depth(value)
    if depth > LIMITS["json_depth"]:
        raise ValueError(f"{path} nests objects and lists at most {LIMITS['json_depth']} deep (the bound of "
                         f"keras_cdm.presets.LIMITS['json_depth']). Received: {depth} levels or more")
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold {what}. Received: {type(value).__name__} {shown(value, 80)}")
    return value


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def _depth(value):
    """Nesting depth of lists and objects (iterative; stops counting past the bound)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > LIMITS["json_depth"]:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _kind(path):
    if path.is_dir():
        return "folder"
    return "special file (device, pipe or socket)" if path.exists() else "missing file"


# -- writing --------------------------------------------------------------------------------


def check_target(folder, overwrite):
    """The folder a preset is written to, through a symlink to it; refuses, before
    anything is written, to replace what is not a preset folder."""
    if isinstance(folder, os.PathLike):
        folder = os.fspath(folder)
    if not isinstance(folder, str) or not folder or "\0" in folder:
        raise ValueError(f"`folder` must be a path (a non-empty string or a Path). Received: folder={shown(folder)}")
    overwrite = check_bool("overwrite", overwrite)
    try:
        return _check_target(folder, overwrite)
    except OSError as error:  # a name too long, a parent that is a file, no permission
        raise ValueError(f"`folder` cannot be written: {error.strerror or error}. Received: folder={shown(folder)}") \
            from error


def _check_target(folder, overwrite):
    path = Path(os.path.abspath(folder))
    if not path.name:
        raise ValueError(f"`folder` must name a folder to write, not a file system root. Received: folder={folder!r}")
    recover_folder(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ValueError(f"{folder} already exists; pass overwrite=True to replace it. Received: overwrite=False")
    if path.is_symlink():  # replace what the link points to; the link stays
        path = path.resolve()
        recover_folder(path)
    if path.exists() and not path.is_dir():
        kind = "file" if path.is_file() else _kind(path)
        raise ValueError(f"{folder} is a {kind}, not a preset folder: overwrite=True replaces preset folders "
                         "only. Remove it first, or choose another folder.")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise ValueError(f"{folder} is a folder that holds no preset (no config.json): overwrite=True replaces "
                         "preset folders (or empty ones) only. Remove it first, or choose another folder.")
    return path


def replace_folder(folder, write):
    """Runs `write(tmp)` on a fresh sibling of `folder`, then swaps it in (atomically
    where the system can); an existing `folder` is kept until the new one is complete."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    _remove_stale_siblings(folder)
    tmp = _sibling(folder, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        if not folder.exists():
            tmp.rename(folder)
        elif exchange(tmp, folder):  # tmp now holds the old folder
            shutil.rmtree(tmp)
        else:
            old = _sibling(folder, "old")
            folder.rename(old)
            tmp.rename(folder)  # killed before this line: `recover_folder` puts `old` back
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def recover_folder(folder):
    """Puts back the folder a save moved aside, if that save was killed before it put
    the new one in place (two-rename swaps only). Returns True if it did."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink() or not folder.parent.is_dir():
        return False
    moved = [path for path in _siblings(folder, "old") if not _writer_alive(path) and (path / "config.json").is_file()]
    for path in sorted(moved, key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(OSError):  # another process got there first
            path.rename(folder)
            return True
    return False


def exchange(a, b):
    """Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    rename = _renameat2()
    if rename is None:
        return False
    if rename(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def final_name(folder):
    """The name a folder being written by `replace_folder` will have."""
    match = _SIBLING.fullmatch(Path(folder).name)
    return match["name"] if match else Path(folder).name


def _sibling(folder, kind):
    return folder.parent / f".{folder.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _siblings(folder, kind):
    pattern = f".{glob.escape(folder.name)}.{kind}-*"
    return [path for path in folder.parent.glob(pattern) if _SIBLING.fullmatch(path.name)]


def _writer_alive(path):
    return process_alive(int(_SIBLING.fullmatch(path.name)["pid"]))


def process_alive(pid):
    """Whether a process with this pid runs (this one included); a pid that is not ours
    to judge (another user's, out of range) counts as alive, so its files are left alone."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _remove_stale_siblings(folder):
    """Removes the temporary and moved-aside siblings of `folder` whose save was killed."""
    for path in _siblings(folder, "tmp") + _siblings(folder, "old"):
        if path.is_dir() and not path.is_symlink() and not _writer_alive(path):
            shutil.rmtree(path, ignore_errors=True)
