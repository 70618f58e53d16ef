"""Entry point of the `keras-cdm` command: sets the deep-learning libraries' logging
defaults, then runs `keras_cdm.cli.main`.

It lies outside the keras_cdm package on purpose: importing any module of the package
imports Keras and its backend, and TensorFlow reads its logging settings, and prints its
start-up lines, while it is imported; these defaults must come first. Importing keras_cdm
in Python sets none of them: only the command does.

Unless the user set it, or passed --debug, the command sets TF_CPP_MIN_LOG_LEVEL=3, so
TensorFlow's and XLA's C++ logs (oneDNN, CUDA stubs, cpu_feature_guard, "failed call to
cuInit"; JAX's XLA reads it too) show only fatal errors. The lines TensorFlow logs while
it is imported, before its logging reads that level, are held back and shown only if
their severity passes it. JAX's notice that it falls back to the CPU when a GPU or TPU is
present without a jaxlib for it is not shown (its warning that a backend failed is).
With --debug the libraries log as they do in Python, and an error shows its traceback.
The command's own output (progress bars, results, its `keras-cdm: warning:` and
`keras-cdm: error:` lines) is never held back.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

LIBRARY_LOG_LEVEL = "3"
"""TF_CPP_MIN_LOG_LEVEL the command sets: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR."""
_LOG_LINE = re.compile(
    rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]\s]+:\d+\] "  # absl / glog: I0000 00:00:1796644939.27 4122 port.cc:153]
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) [^\]\s]+:\d+\] "  # TensorFlow < 2.19: 2025-09-17 14:44:05.1: I x.cc:32]
)
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_JAX_FALLBACK_NOTICES = ("An NVIDIA GPU may be present on this machine", "A Google TPU may be present on this machine")


def _debug(argv):
    """Whether `argv` asks for --debug (or an abbreviation argparse accepts), before the `--` that ends options."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(len(arg) >= 4 and "--debug".startswith(arg) for arg in options)


def _level():
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0 when unset or not an integer)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _shown(line, level):
    """Whether a line written to stderr passes `level`: the library log lines below it do not."""
    if line.rstrip(b"\r\n") == _ABSL_NOTICE:
        return level < 1
    match = _LOG_LINE.match(line)
    return match is None or "IWEF".index((match[1] or match[2]).decode()) >= level


@contextlib.contextmanager
def _held_back_stderr(level):
    """Runs the block with the process's stderr (file descriptor 2, where C++ libraries
    write) going to a temporary file, then writes the lines that pass `level` to stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr, or not a file descriptor: nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held.read().splitlines(keepends=True) if _shown(line, level))
            if kept:
                sys.stderr.buffer.write(kept) if hasattr(sys.stderr, "buffer") else sys.stderr.write(kept.decode())
                sys.stderr.flush()


class _DropJaxFallbackNotices(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith(_JAX_FALLBACK_NOTICES)


def quiet_libraries():
    """The command's logging defaults (see the module's docstring); values the user set stay."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", LIBRARY_LOG_LEVEL)
    logging.getLogger("jax._src.xla_bridge").addFilter(_DropJaxFallbackNotices())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debug(argv)
    if not debug:
        quiet_libraries()
    try:
        with _held_back_stderr(_level()):
            from keras_cdm import cli  # imports Keras and its backend
    except Exception as error:  # e.g. KERAS_BACKEND names a backend that is not installed
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        user_error = isinstance(error, (ImportError, ValueError))
        sys.stderr.write(f"keras-cdm: error: {message}\n" if user_error else
                         f"keras-cdm: error: internal error ({type(error).__name__}: {message}); run with "
                         "--debug for the traceback\n")
        return 2 if user_error else 1
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
