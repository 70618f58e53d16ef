"""Renders the keras-io-format guides to Markdown (with their figures) and notebooks.

    python scripts/render_guides.py                      # every guide, full mode
    python scripts/render_guides.py getting_started --fast
    python scripts/render_guides.py --out /tmp/rendered

Each guide runs in a fresh Python process, cell by cell (a cell is the code between two
top-level markdown strings), in the output folder, so the PNGs it writes land next to the
Markdown. The Markdown gets the guide's header, its markdown cells, every code cell, what
the cell printed, and the figures the cell wrote, right after it. The notebook
(`<guide>.ipynb`) holds the same cells without outputs, like keras-io's.
`--fast` sets KERAS_CDM_GUIDES_FAST=1 (the guides' fast mode, used by the tests).
"""

import argparse
import ast
import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

GUIDES = Path(__file__).resolve().parent.parent / "guides"
HEADER_FIELDS = ("Title", "Author", "Date created", "Last modified", "Description", "Accelerator")
MAX_OUTPUT_LINES = 40


def guide_paths():
    return sorted(p for p in GUIDES.glob("*.py") if not p.name.startswith("_"))


def parse(path):
    """Returns (header dict, cells); a cell is ("markdown", text) or ("code", source)."""
    source = Path(path).read_text()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    body = tree.body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        raise ValueError(f"{path}: a guide starts with its header docstring ({', '.join(HEADER_FIELDS)})")
    header = {}
    for line in body[0].value.value.strip().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in HEADER_FIELDS:
            header[key.strip()] = value.strip()
    missing = [f for f in HEADER_FIELDS if f not in header]
    if missing:
        raise ValueError(f"{path}: header lacks {missing}")
    cells, start = [], body[0].end_lineno
    for node in body[1:]:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            _add_code(cells, lines[start:node.lineno - 1])
            cells.append(("markdown", node.value.value.strip()))
            start = node.end_lineno
    _add_code(cells, lines[start:])
    return header, cells


def _add_code(cells, lines):
    code = "".join(lines).strip("\n")
    if code.strip():
        cells.append(("code", code))


def _clean_output(text):
    """Progress bars redraw with \\r and \\b: keep what a terminal would finally show."""
    out = []
    for line in text.split("\n"):  # not splitlines(): it also splits at "\r"
        line = line.split("\r")[-1]
        while "\b" in line:
            line = re.sub(r"[^\b]\b", "", line, count=1).lstrip("\b")
        out.append(line.rstrip())
    while out and not out[-1]:
        out.pop()
    if len(out) > MAX_OUTPUT_LINES:
        out = out[: MAX_OUTPUT_LINES // 2] + [f"... ({len(out) - MAX_OUTPUT_LINES} lines) ..."] + out[-MAX_OUTPUT_LINES // 2:]
    return "\n".join(out)


def _pngs(folder):
    return {p.name: p.stat().st_mtime_ns for p in Path(folder).glob("*.png")}


def execute(path, out_dir):
    """Runs the guide cell by cell in this process (cwd = out_dir); returns rendered cells."""
    header, cells = parse(path)
    os.chdir(out_dir)
    sys.path.insert(0, str(Path(path).resolve().parent))
    namespace = {"__name__": "__main__", "__file__": str(Path(path).resolve())}
    rendered = []
    for kind, text in cells:
        if kind == "markdown":
            rendered.append({"kind": kind, "text": text})
            continue
        before = _pngs(out_dir)
        buffer = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buffer):
            exec(compile(text, str(path), "exec"), namespace)
        seconds = time.perf_counter() - start
        after = _pngs(out_dir)
        images = sorted(n for n, m in after.items() if before.get(n) != m)
        rendered.append({"kind": kind, "text": text, "output": _clean_output(buffer.getvalue()),
                         "images": images, "seconds": seconds})
        sys.__stdout__.write(buffer.getvalue())
    return header, rendered


def to_markdown(header, cells, mode, seconds):
    lines = [f"# {header['Title']}", "",
             f"**Author:** {header['Author']}<br>",
             f"**Date created:** {header['Date created']}<br>",
             f"**Last modified:** {header['Last modified']}<br>",
             f"**Description:** {header['Description']}<br>",
             f"**Accelerator:** {header['Accelerator']}", "",
             f"*Rendered by `python scripts/render_guides.py` in {mode} mode on {_machine()}, "
             f"{seconds:.0f} s end to end.*", ""]
    for cell in cells:
        if cell["kind"] == "markdown":
            lines += [cell["text"], ""]
            continue
        lines += ["```python", cell["text"], "```", ""]
        if cell["output"]:
            lines += ["```", cell["output"], "```", ""]
        for image in cell["images"]:
            lines += [f"![{Path(image).stem}]({image})", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_notebook(header, cells):
    def source(text):
        return text.splitlines(keepends=True)

    nb_cells = [{"cell_type": "markdown", "metadata": {}, "source": source(
        f"# {header['Title']}\n\n**Author:** {header['Author']}<br>\n**Date created:** {header['Date created']}<br>\n"
        f"**Last modified:** {header['Last modified']}<br>\n**Description:** {header['Description']}")}]
    for kind, text in cells:
        if kind == "markdown":
            nb_cells.append({"cell_type": "markdown", "metadata": {}, "source": source(text)})
        else:
            nb_cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                             "source": source(text)})
    return {"cells": nb_cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                           "name": "python3"},
                                            "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _machine():
    cpus = os.cpu_count()
    return f"{platform.machine()} with {cpus} CPU core{'s' if cpus != 1 else ''}"


def render(path, out_dir, fast, env_overrides=None):
    """Renders one guide in a fresh process; returns the Markdown file."""
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env_overrides or {})}
    env["KERAS_CDM_GUIDES_FAST"] = "1" if fast else "0"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--execute", str(path), "--out", str(out_dir)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"{path.name} failed (exit {proc.returncode}); output so far:\n{proc.stdout[-3000:]}")
    header, cells = json.loads(proc.stdout.rsplit("\n@@RENDERED@@\n", 1)[1])
    markdown = out_dir / f"{path.stem}.md"
    markdown.write_text(to_markdown(header, cells, "fast" if fast else "full", time.perf_counter() - start))
    _, raw_cells = parse(path)
    (out_dir / f"{path.stem}.ipynb").write_text(json.dumps(to_notebook(header, raw_cells), indent=1) + "\n")
    return markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guides", nargs="*", help="guide names (default: all)")
    parser.add_argument("--fast", action="store_true", help="run the guides in fast mode")
    parser.add_argument("--out", default=str(GUIDES / "rendered"))
    parser.add_argument("--loopback-hub", action="store_true",
                        help="run against a loopback Hub (keras_cdm.testing.hub_server) instead of "
                             "huggingface.co: the Hub guide then uploads without a token or network")
    parser.add_argument("--execute", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.execute:
        header, cells = execute(args.execute, args.out)
        sys.__stdout__.write("\n@@RENDERED@@\n" + json.dumps([header, cells]))
        return 0
    available = {p.stem: p for p in guide_paths()}
    unknown = [g for g in args.guides if g not in available]
    if unknown:
        parser.error(f"unknown guide(s) {unknown}; available: {sorted(available)}")
    with contextlib.ExitStack() as stack:
        overrides = {}
        if args.loopback_hub:
            import tempfile

            from keras_cdm.testing.hub_server import HubServer

            server = stack.enter_context(HubServer())
            overrides = {"HF_ENDPOINT": server.endpoint, "HF_TOKEN": "loopback", "HF_HUB_DISABLE_TELEMETRY": "1",
                         "HF_HUB_CACHE": stack.enter_context(tempfile.TemporaryDirectory()),
                         "KERAS_CDM_GUIDES_HUB_REPO": "keras-cdm-guides/cdm-mnist32"}
        for name in args.guides or sorted(available):
            start = time.perf_counter()
            markdown = render(available[name], args.out, args.fast, overrides)
            print(f"{name}: {markdown} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
