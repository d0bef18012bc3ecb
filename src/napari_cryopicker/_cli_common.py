"""What the `cryopicker` subcommands share: the exit codes, :class:`CLIError`, the terminal
progress bar, the core's warnings as ``cryopicker: warning:`` lines, and reading
tomograms, picks and class tables from the arguments (see :mod:`.cli`)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from pathlib import Path

from .core.errors import CryoPickerError, CryoPickerWarning

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1


class CLIError(CryoPickerError):
    pass


# ------------------------------------------------------------------------------ helpers
def _bar():
    from .core.progress import Progress, TerminalBar

    bar = TerminalBar()
    return Progress(callback=bar), bar


def _load_tomogram(path, level: int = 0):
    from .core.tomogram import open_tomogram

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tomo = open_tomogram(path, level=level)
    for w in caught:
        print(f"cryopicker: warning: {one_line(w.message)}", file=sys.stderr)
    return tomo


def one_line(text: str) -> str:
    """A message as one plain line: no terminal colour codes, whitespace runs collapsed."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text)).split())


@contextlib.contextmanager
def _warnings_as_lines():
    """Show the core's warnings (what it rescaled, ignored or assumed) as ``cryopicker: warning:`` lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CryoPickerWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CryoPickerWarning):
                print(f"cryopicker: warning: {one_line(message)}", file=sys.stderr, flush=True)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _read_picks(path, **kw):
    from .core.formats import read_picks

    return read_picks(path, **kw)


def _classes_arg(specs, fallback_picks=None, sidecar: Path | None = None):
    from .core.classes import ClassTable

    if specs:
        return ClassTable.parse(specs)
    if sidecar is not None and sidecar.exists():
        return ClassTable.from_dict(json.loads(sidecar.read_text()))
    return None

