"""Run a named benchmark of bench/suite.toml: `locft bench` with the preset's options.

    python bench/run.py --list
    python bench/run.py zsre-1000                      # data from $LOCFT_BENCH_DATA
    python bench/run.py zsre-1000 --data-dir ~/data -- --save-snapshot /tmp/snap
    python bench/run.py engine-df --dry-run            # print the command only

The record goes to bench/results/<folder>/<record>_<date>_<commit>.json (the date today, the
commit HEAD's): the naming bench/results_table.py reads. Arguments after `--` go to `locft bench`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import results_table  # a sibling script: the naming of records

from locft.recorded import BENCH_DATA_VAR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "bench" / "suite.toml"
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    record: str
    folder: str
    data: str | None = None  # a file in the data directory
    repo_data: str | None = None  # a file in this repository
    options: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)

    def data_path(self, data_dir: Path | None) -> Path:
        if self.repo_data is not None:
            return Path(self.repo_data)  # the command runs in the repository root
        if data_dir is None:
            raise SystemExit(f"{self.name} reads {self.data} from the data directory: "
                             f"set ${BENCH_DATA_VAR} or pass --data-dir")
        return data_dir / str(self.data)

    def bench_args(self, data: Path) -> list[str]:
        """`locft bench` arguments, --out excepted."""
        args = ["--data", str(data)]
        for option, value in self.options.items():
            for one in value if isinstance(value, list) else [value]:
                if one is True:
                    args.append(f"--{option}")
                elif one is not False:
                    args += [f"--{option}", str(one)]
        for key, value in self.set.items():
            args += ["--set", f"{key}={value}"]
        return args


def load_suite(path: Path = SUITE) -> dict[str, Preset]:
    with path.open("rb") as f:
        table = tomllib.load(f)
    presets = {}
    for name, spec in table.items():
        if (spec.get("data") is None) == (spec.get("repo_data") is None):
            raise ValueError(f"{path}: [{name}] needs exactly one of data and repo_data")
        presets[name] = Preset(name=name, **spec)
    return presets


def locft_command() -> list[str]:
    """The console script beside this interpreter (so the record's command reads `locft bench ...`)."""
    script = Path(sys.executable).with_name("locft")
    if script.exists():
        return [str(script)]
    found = shutil.which("locft")
    return [found] if found else [sys.executable, "-m", "locft.cli.main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", metavar="PRESET")
    parser.add_argument("--list", action="store_true", help="name and describe every preset")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get(BENCH_DATA_VAR) or None,
                        help=f"the directory holding the benchmark files (default: ${BENCH_DATA_VAR})")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help="records go to OUT_DIR/<folder>/ (default: bench/results)")
    parser.add_argument("--dry-run", action="store_true", help="print each command, run nothing")
    args = parser.parse_args(argv)
    suite = load_suite()
    if args.list or not args.presets:
        for preset in suite.values():
            print(f"{preset.name:22} {preset.about}")
        return 0
    unknown = [name for name in args.presets if name not in suite]
    if unknown:
        parser.error(f"no preset {', '.join(unknown)}; --list names them")
    stamp = results_table.stamp()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "locft"], cwd=REPO,
                           capture_output=True, text=True).stdout
    if dirty and not args.dry_run:
        print(f"warning: locft/ has uncommitted changes; the records' commit ({stamp}) is not what runs",
              file=sys.stderr)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    for name in args.presets:
        preset = suite[name]
        out = args.out_dir.resolve() / preset.folder / f"{preset.record}_{stamp}.json"
        if out.is_absolute() and out.is_relative_to(REPO):
            out = out.relative_to(REPO)  # the record's command then reads as run from the root
        command = [*locft_command(), "bench", *preset.bench_args(preset.data_path(data_dir)), *extra,
                   "--out", str(out)]
        print("+ " + shlex.join(command), flush=True)
        if args.dry_run:
            continue
        (REPO / out).parent.mkdir(parents=True, exist_ok=True)
        env = os.environ | ({BENCH_DATA_VAR: str(data_dir)} if data_dir else {})  # the record names files by it
        done = subprocess.run(command, cwd=REPO, env=env)
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
