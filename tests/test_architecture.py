"""The README's architecture section matches the tree, and the layers it draws hold in the imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "locft"

# The README's layers, bottom (0) to top. A module may import a lower layer; within a layer only
# the rows whose members build on each other (shared plain modules, workflows, shells) may.
LAYER = {
    "policies": 1,
    "engine": 2, "store": 2,
    "evaluation": 3,
    "rounds": 4, "serving": 4, "locate": 4, "benchmark": 4, "speed": 4, "step_profile": 4, "checks": 4,
    "api": 5,
    "cli": 6, "daemon": 6,
}  # every other top-level module of locft is a shared plain module: layer 0
SAME_LAYER_IMPORTS = {0, 4, 6}
NO_TORCH = ("policies", "store")


def _architecture_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Architecture\n(.*?)^## ", readme, flags=re.S | re.M)
    assert match, "README.md has no '## Architecture' section"
    return match.group(1)


def _unit(path: Path) -> str:
    """The top-level package or module of locft a file belongs to."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The locft modules a file imports (at any depth: lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "locft":
                found.update(f"locft.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_is_in_the_architecture_table() -> None:
    section = _architecture_section()
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [name for name in packages if f"`locft/{name}/`" not in section]
    assert not missing, f"README's architecture section does not describe: {missing}"


def test_every_path_the_architecture_section_names_exists() -> None:
    section = _architecture_section()
    named = set(re.findall(r"`(locft/[\w/.]+?)/?`", section))
    table_rows = re.findall(r"^\| `locft/(\w+)/`.*\| (.+) \|$", section, flags=re.M)
    for package, start in table_rows:  # "where to start" names files inside that package
        named.update(f"locft/{package}/{name}" for name in re.findall(r"`([\w/]+\.py)", start))
    assert named
    absent = sorted(p for p in named if not (ROOT / p).exists())
    assert not absent, f"README's architecture section names paths that do not exist: {absent}"


def test_every_layer_of_the_table_is_a_real_unit() -> None:
    units = {_unit(p) for p in _sources()}
    assert set(LAYER) <= units, f"layers name units that are gone: {set(LAYER) - units}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path: Path) -> None:
    src = _unit(path)
    upward = []
    for module in _imports(path):
        parts = module.split(".")
        if parts[0] != "locft" or len(parts) < 2 or parts[1] in (src, "__version__"):
            continue
        src_layer, dst_layer = LAYER.get(src, 0), LAYER.get(parts[1], 0)
        if dst_layer > src_layer or (dst_layer == src_layer and src_layer not in SAME_LAYER_IMPORTS):
            upward.append(module)
    assert not upward, f"{src} (layer {LAYER.get(src, 0)}) imports from a layer it must not: {sorted(upward)}"


@pytest.mark.parametrize("unit", NO_TORCH)
def test_deciding_and_storing_never_import_torch(unit: str) -> None:
    heavy = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m.split(".")[0] in ("torch", "transformers"))
        for path in (PACKAGE / unit).rglob("*.py")
    }
    assert not {k: v for k, v in heavy.items() if v}
