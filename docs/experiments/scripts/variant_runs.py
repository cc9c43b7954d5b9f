"""Running a bench's variants each in a fresh process (memory figures need one per variant)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Sequence


def run_in_children(script: str, variants: Sequence[str], child_args: Sequence[str], out: str | None) -> None:
    """Run `python script --one VARIANT *child_args` per variant; its last stdout line is a JSON row.
    Each row gains the load average and the command that ran this bench, is printed, and is
    appended to `out` when given."""
    for variant in variants:
        cmd = [sys.executable, script, "--one", variant, *child_args]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        row["load_average"] = [round(x, 2) for x in os.getloadavg()]
        row["command"] = " ".join(["python", *sys.argv])
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            with open(out, "a") as f:
                f.write(line + "\n")
