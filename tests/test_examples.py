"""The example facts the README's quick start imports, and no product text pointing outside the repo."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from locft.cli.main import cli
from locft.home import Home
from locft.readers import read_facts
from locft.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "facts.jsonl"


def test_the_example_facts_read_cleanly_with_paraphrases_and_probes() -> None:
    result = read_facts(EXAMPLE, "auto")
    assert result.format == "jsonl" and not result.errors
    assert len(result.records) == 10
    assert all(r.fact.paraphrases and r.fact.probes for r in result.records)


def test_the_quick_start_import_works(home: Home) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0
    out = runner.invoke(cli, ["import", str(EXAMPLE)])
    assert out.exit_code == 0, out.output
    with Store.open(home) as store:
        assert store.count_facts().active == 10


def test_product_text_refers_to_nothing_outside_the_repository() -> None:
    # ../shared/ exists only in the development workspace; MEASURED.md was never committed
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "locft").rglob("*.py")
                 if re.search(r"MEASURED\.md", p.read_text(encoding="utf-8"))]
    assert offenders == []
    assert _files_naming_the_workspace() == []
    for path in re.findall(r"`(examples/[^`\s]+)`|locft import (examples/\S+)", readme):
        assert (ROOT / (path[0] or path[1])).exists()


PRODUCT_FILES = ("README.md", "Makefile", "pyproject.toml", ".ci", "locft", "bench", "docs", "examples", "contrib")


def _files_naming_the_workspace() -> list[str]:
    """Product files (records and docs included) that name ../shared or MEASURED.md."""
    outside = re.compile(r"\.\./shared\b|/shared/data/|MEASURED\.md")
    found = []
    for top in PRODUCT_FILES:
        root = ROOT / top
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts or path.suffix in (".png", ".pyc"):
                continue
            if outside.search(path.read_text(encoding="utf-8", errors="replace")):
                found.append(str(path.relative_to(ROOT)))
    return found

