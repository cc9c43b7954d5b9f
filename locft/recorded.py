"""How a benchmark record writes the data it read and the command that made it.

Records are shared (the repository keeps them), so they must not name directories of the
machine a run happened on. A path inside `$LOCFT_BENCH_DATA`, the directory that holds the
benchmark files, is written as `$LOCFT_BENCH_DATA/<name>`; whoever re-runs the command sets the
variable to their own copy, and `expand_recorded_path` reads such a path back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from locft.errors import ConfigError

BENCH_DATA_VAR = "LOCFT_BENCH_DATA"


def _bench_data_dir() -> Path | None:
    value = os.environ.get(BENCH_DATA_VAR)
    return Path(value).expanduser().resolve() if value else None


def recorded_path(path: str | Path) -> str:
    """`path` as a record writes it: relative to $LOCFT_BENCH_DATA when it lies inside it."""
    root = _bench_data_dir()
    if root is not None:
        resolved = Path(path).expanduser().resolve()
        if resolved == root:
            return f"${BENCH_DATA_VAR}"
        if resolved.is_relative_to(root):
            return f"${BENCH_DATA_VAR}/{resolved.relative_to(root).as_posix()}"
    return str(path)


def _recorded_argument(arg: str) -> str:
    option, eq, value = arg.partition("=")
    if eq and option.startswith("--"):
        return f"{option}={_recorded_argument(value)}"
    return recorded_path(arg) if arg and not arg.startswith("-") and Path(arg).exists() else arg


def recorded_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this process as a record writes it: `locft ...` for the console
    script, `python <script> ...` otherwise, each existing file under $LOCFT_BENCH_DATA by
    that variable."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0])
    run_as_locft = program.name == "locft" or program.as_posix().endswith("locft/cli/main.py")
    head = ["locft"] if run_as_locft else ["python", program.as_posix()]
    return " ".join(head + [_recorded_argument(arg) for arg in argv[1:]])


def expand_recorded_path(text: str) -> Path:
    """A path read from a record, $LOCFT_BENCH_DATA expanded (an error says to set it)."""
    if f"${BENCH_DATA_VAR}" in text and _bench_data_dir() is None:
        raise ConfigError(f"the record reads {text}: set {BENCH_DATA_VAR} to the directory that holds "
                               "the benchmark files")
    return Path(os.path.expandvars(text))
