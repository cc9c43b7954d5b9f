"""Python 3.10 has no tomllib: config and locate fall back to tomli (declared for < 3.11)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter where `import tomllib` fails as on 3.10, with tomllib itself standing in
# for tomli (the same parser, by the same author) so the test needs no extra install.
SCRIPT = textwrap.dedent(
    """
    import sys, tempfile
    from pathlib import Path
    try:
        real = __import__("tomllib")
    except ModuleNotFoundError:  # Python 3.10: tomli is what every import here uses anyway
        real = __import__("tomli")
    sys.modules["tomllib"] = None  # makes `import tomllib` raise ModuleNotFoundError
    sys.modules["tomli"] = real
    import locft.config, locft.locate.record
    assert locft.config.tomllib is real and locft.locate.record.tomllib is real
    home = Path(tempfile.mkdtemp())
    (home / "locft.toml").write_text('[schedule]\\ncron = "off"\\n')
    assert locft.config.load_config(home).schedule.cron is None
    print("ok")
    """
)


def test_config_and_locate_fall_back_to_tomli_without_tomllib() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_tomli_is_declared_for_the_pythons_without_tomllib() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "\"tomli>=1.1; python_version < '3.11'\"" in text
