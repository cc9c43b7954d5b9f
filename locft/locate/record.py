"""Recording a `locft locate` pick in locft.toml: [edit] location/layers, every other line kept."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from locft.atomic import atomic_write_text
from locft.config import CONFIG_TEMPLATE, LocftConfig, from_dict
from locft.errors import ConfigError

NOTE = "locft locate"  # the comment above a recorded location: "# locft locate: <note>"


def location_lines(template: str, layers: Sequence[int]) -> list[str]:
    """The [edit] lines that name a location (what an operator pastes by hand)."""
    lines = [f"location = {json.dumps(template, ensure_ascii=False)}"]
    if "{L}" in template:
        lines.append(f"layers = [{', '.join(str(int(x)) for x in layers)}]")
    return lines


def set_location_text(text: str, template: str, layers: Sequence[int], note: str | None = None) -> str:
    """`text` (a locft.toml) with [edit] location/layers set; everything else kept as written
    (tomlkit keeps comments and layout).

    Earlier `location` / `layers` keys of [edit] and earlier `# locft locate` notes there are
    replaced; the new lines go where the old `location` key was (or its note), else right under
    [edit] (which is appended when missing). The result is checked by parsing: apart from the
    two keys it must mean exactly what `text` meant, else ConfigError (nothing is written).
    """
    import tomlkit
    from tomlkit.container import Container
    from tomlkit.exceptions import TOMLKitError
    from tomlkit.items import Comment, Table
    from tomlkit.toml_document import TOMLDocument

    try:
        before = tomllib.loads(text)
        doc = tomlkit.parse(text if text.endswith("\n") or not text else text + "\n")
    except (tomllib.TOMLDecodeError, TOMLKitError) as exc:
        raise ConfigError(f"locft.toml does not parse ({exc}); fix it before recording a location") from None
    block = location_lines(template, layers)
    new_items: list[tuple[str | None, Any]] = [(None, tomlkit.comment(f"{NOTE}: {note}"))] if note else []
    new_items.append(("location", tomlkit.item(template)))
    if "{L}" in template:
        new_items.append(("layers", tomlkit.item([int(x) for x in layers])))

    def refuse() -> ConfigError:
        return ConfigError(
            "could not update locft.toml automatically (its [edit] table is written in a way this "
            "editor does not handle); set these lines in [edit] yourself:\n  " + "\n  ".join(block))

    old = doc.get("edit")
    if old is None:
        if doc.body:
            doc.add(tomlkit.nl())
        table = tomlkit.table()
        for key, item in new_items:
            table.raw_append(key, item)
        doc.add("edit", table)
    elif isinstance(old, Table) and not old.is_super_table():  # a plain [edit] header
        kept: list[tuple[Any, Any]] = []  # (tomlkit Key or None, item): keys keep their spelling
        at = 0
        for old_key, old_item in old.value.body:
            is_note = isinstance(old_item, Comment) and old_item.as_string().lstrip().startswith(f"# {NOTE}")
            if old_key is None and is_note:
                continue
            if old_key is not None and old_key.key in ("location", "layers"):
                if old_key.key == "location":  # the new lines go here (where its note was, if any)
                    at = len(kept)
                continue
            kept.append((old_key, old_item))
        # Rebuilt the way tomlkit's parser builds a document (parsed=True: appending adds no
        # cosmetic blank lines), so every other item renders exactly as it was read.
        table = Table(Container(True), old.trivia, is_aot_element=False)
        for key, item in kept[:at] + new_items + kept[at:]:
            table.raw_append(key, item)
        rebuilt = TOMLDocument(True)
        for doc_key, doc_item in doc.body:
            rebuilt.append(doc_key, table if doc_item is old else doc_item)
        doc = rebuilt
    else:  # dotted keys (edit.lr = ...), an inline table, [edit] split around other tables
        raise refuse()
    new_text = tomlkit.dumps(doc)

    expected = copy.deepcopy(before)
    edit_table = expected.setdefault("edit", {})
    edit_table["location"] = template
    if "{L}" in template:
        edit_table["layers"] = [int(x) for x in layers]
    else:
        edit_table.pop("layers", None)
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise refuse()
    from_dict(LocftConfig, after)  # ConfigError if the result is not a valid config
    return new_text


def record_location(config_path: Path, template: str, layers: Sequence[int], note: str | None = None) -> bool:
    """Write [edit] location/layers into `config_path` atomically; False when already so.

    A missing file starts from the commented template `locft init` writes. The file's
    permissions are kept.
    """
    config_path = Path(config_path)
    try:
        text = config_path.read_text(encoding="utf-8")
        mode = config_path.stat().st_mode & 0o7777
    except FileNotFoundError:
        text, mode = CONFIG_TEMPLATE, None
    try:
        current = tomllib.loads(text).get("edit", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: {exc}; fix it before recording a location") from None
    wanted_layers = [int(x) for x in layers] if "{L}" in template else None
    if current.get("location") == template and current.get("layers") == wanted_layers:
        return False
    new_text = set_location_text(text, template, layers, note)
    # Someone may have edited the file while the sweep ran: never overwrite their change.
    now = config_path.read_text(encoding="utf-8") if config_path.exists() else CONFIG_TEMPLATE
    if now != text:
        raise ConfigError(f"{config_path} changed while locate was writing it; run again")
    atomic_write_text(config_path, new_text)
    if mode is not None:
        os.chmod(config_path, mode)
    return True
