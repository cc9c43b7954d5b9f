"""locft.locate (the package) on the tiny random Llama: candidates, the sweep, and recording the pick in locft.toml."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from locft.config import CONFIG_TEMPLATE, EditConfig, ModelConfig, load_config
from locft.engine.model_io import LoadedModel, load_base
from locft.engine.targets import DOWN_PROJ, EditLocation, choose_edit_location
from locft.errors import ConfigError, LocationError, LocftError
from locft.facts import EditFact, Probe
from locft.locate.candidates import available_layers, build_candidates, mlp_out_template, sample_facts, spread_layers
from locft.locate.record import record_location, set_location_text
from locft.locate.sweep import LocateSettings, locate
from locft.policies.location import select_from_sweep
from tests.round_helpers import FACTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path_factory.mktemp("load-home"))


FACTS_FULL = [EditFact(p, a, paraphrases=(f"{p[:-3]}:",), probes=(Probe("The first month of the year is"),))
              for p, a in FACTS]
# What the round tests use: the tiny model learns these in ~30 epochs at lr 1e-2 with raw prompts.
TINY_EDIT = EditConfig(lr=1e-2, batch_size=4, prompt_format="raw", max_new_tokens=8)


# ---------------------------------------------------------------------------------------------
# candidates


def test_candidates_default_to_the_mlp_output_projection_spread_over_the_depth(loaded: LoadedModel) -> None:
    assert mlp_out_template(loaded.model) == DOWN_PROJ
    assert available_layers(loaded.model, DOWN_PROJ) == [0, 1, 2, 3]
    assert available_layers(loaded.model, "model.layers.{L}") == [0, 1, 2, 3]  # modules count too
    cands = build_candidates(loaded.model)
    assert cands == [EditLocation(DOWN_PROJ, (layer,)) for layer in (0, 1, 2, 3)]
    assert spread_layers(range(30)) == [3, 7, 12, 16, 20, 25]
    assert spread_layers([5]) == [5] and spread_layers([]) == []


def test_candidates_from_layers_and_templates_and_the_current_location(loaded: LoadedModel) -> None:
    current = EditLocation(DOWN_PROJ, (3,))
    # the current location joins a default sweep, not an explicit --layers one
    up = "model.layers.{L}.mlp.up_proj.weight"
    assert build_candidates(loaded.model, current, [up]) == [EditLocation(up, (L,)) for L in range(4)] + [current]
    assert build_candidates(loaded.model, current, (), [1, 2, 1]) == [EditLocation(DOWN_PROJ, (1,)),
                                                                       EditLocation(DOWN_PROJ, (2,))]
    # a configured location that does not resolve is left out, not an error: locate fixes it
    broken = EditLocation("model.layers.{L}.mlp.nope.weight", (1,))
    assert build_candidates(loaded.model, broken) == build_candidates(loaded.model)
    whole = "model.layers.2.mlp"
    assert build_candidates(loaded.model, None, [whole], [1]) == [EditLocation(whole, ())]
    with pytest.raises(LocationError, match=r"layer\(s\) 7 do not exist.*0\.\.3"):
        build_candidates(loaded.model, None, (), [1, 7])
    with pytest.raises(LocationError, match="names no parameter"):
        build_candidates(loaded.model, None, ["model.layers.{L}.mlp.nope.weight"])
    with pytest.raises(LocationError, match="matches no parameter"):
        build_candidates(loaded.model, None, ["model.nothing.here"])


def test_the_sample_is_seeded_and_keeps_file_order() -> None:
    facts = [EditFact(f"q{i}", "a") for i in range(100)]
    a, b = sample_facts(facts, 10, 0), sample_facts(facts, 10, 0)
    assert a == b and len(a) == 10
    assert [facts.index(f) for f in a] == sorted(facts.index(f) for f in a)
    assert sample_facts(facts, 10, 1) != a
    assert sample_facts(facts[:5], 10, 0) == facts[:5]


# ---------------------------------------------------------------------------------------------
# the sweep


def test_locate_measures_every_candidate_and_picks_by_the_priority(loaded: LoadedModel, tmp_path: Path) -> None:
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    cands = [EditLocation(DOWN_PROJ, (1,)), EditLocation(DOWN_PROJ, (3,))]
    events: list[str] = []
    settings = LocateSettings(sample=3, epochs=30, capability_tasks=("wiki_bpb",), capability_limit=3,
                              probe_set_size=8, exact_locality=True)
    report = locate(loaded, FACTS_FULL, cands, TINY_EDIT, settings, cache_dir=tmp_path / "cache",
                    current=cands[1], progress=lambda p: events.append(p.phase))

    assert report.n_facts == 4 and report.n_sample == 3
    assert report.n_probes == 9  # 8 fixed + the facts' one shared probe
    assert set(report.base_capability) == {"wiki_bpb"}
    assert [c.location for c in report.candidates] == [loc.describe() for loc in cands]
    assert [c.current for c in report.candidates] == [False, True]
    for c in report.candidates:
        assert c.error is None and c.epochs == 30
        for value in (c.reliability, c.generalization, c.locality, c.locality_exact, c.capability_drop):
            assert isinstance(value, float) and 0 <= abs(value) <= 1
        assert set(c.capability) == {"wiki_bpb"}
        assert c.capability_drop == pytest.approx(c.capability["wiki_bpb"] - report.base_capability["wiki_bpb"])
        assert c.train_seconds > 0 and c.eval_seconds > 0
    assert max(c.reliability for c in report.candidates) >= 2 / 3  # the sample was learned
    # the pick is the policy's pick on these very numbers
    assert report.selection.winner == select_from_sweep([c.score() for c in report.candidates]).winner
    assert report.selection.status[report.selection.winner] == "chosen"
    assert report.why_not_recordable() is None
    assert {"base", "train", "evaluate", "capability"} <= set(events)
    data = report.to_dict()
    assert data["winner"] == report.winner.location and data["settings"]["epochs"] == 30
    assert data["edit"]["lr"] == 1e-2 and "location" not in data["edit"]
    assert data["edit"]["batch_size"] == 1  # 3 facts: shrunk from 4 to give >= 4 steps per epoch
    # every candidate started from, and left, the base weights
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())


def test_locate_without_capability_or_probes_and_with_too_few_epochs(loaded: LoadedModel, tmp_path: Path) -> None:
    facts = [EditFact(p, a) for p, a in FACTS]  # no paraphrases, no probes
    settings = LocateSettings(epochs=1, capability_tasks=(), probe_set_size=0)
    report = locate(loaded, facts, [EditLocation(DOWN_PROJ, (1,)), EditLocation(DOWN_PROJ, (2,))], TINY_EDIT,
                    settings, cache_dir=tmp_path)
    assert report.base_capability == {} and report.n_probes == 0
    for c in report.candidates:
        assert c.capability_drop is None and c.locality is None and c.generalization is None
        assert c.reliability is not None and c.locality_exact is None
    assert report.edit["batch_size"] == 1 and report.settings["epochs"] == 1
    assert any(s.startswith("capability: not measured") for s in report.selection.steps)
    assert any("no location learned the sample well in 1 epochs" in w for w in report.warnings)
    assert "raise --epochs" in (report.why_not_recordable() or "")


def test_locate_refuses_bad_input_before_training(loaded: LoadedModel, tmp_path: Path) -> None:
    loc = [EditLocation(DOWN_PROJ, (1,))]
    with pytest.raises(LocftError, match="no facts"):
        locate(loaded, [], loc, TINY_EDIT, cache_dir=tmp_path)
    with pytest.raises(LocftError, match="no candidate"):
        locate(loaded, FACTS_FULL, [], TINY_EDIT, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown capability task"):
        locate(loaded, FACTS_FULL, loc, TINY_EDIT, LocateSettings(capability_tasks=("arc_eazy",)), cache_dir=tmp_path)
    with pytest.raises(LocationError):
        locate(loaded, FACTS_FULL, loc + [EditLocation(DOWN_PROJ, (9,))], TINY_EDIT, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="sample"):
        LocateSettings(sample=0)


# ---------------------------------------------------------------------------------------------
# recording the pick


def _config(text: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "locft.toml").write_text(text, encoding="utf-8")
    return load_config(tmp_path)


def test_recording_into_the_init_template_keeps_every_comment(tmp_path: Path) -> None:
    text = set_location_text(CONFIG_TEMPLATE, DOWN_PROJ, [8], note="swept")
    assert text.startswith(CONFIG_TEMPLATE.split("[edit]\n")[0] + "[edit]\n# locft locate: swept\n")
    removed = [line for line in CONFIG_TEMPLATE.splitlines() if line not in text.splitlines()]
    assert removed == []  # only added lines
    cfg = _config(text, tmp_path)
    assert cfg.edit.location == DOWN_PROJ and cfg.edit.layers == (8,)


def test_recording_replaces_the_old_location_and_keeps_the_rest(tmp_path: Path) -> None:
    old = (
        '# my home\n[model]\npath = "/m"  # [edit] in a comment\n\n'
        '[edit]\nlr = 0.01   # tuned by hand\n'
        '# locft locate: an earlier run\n'
        'location = "model.layers.{L}.mlp.up_proj.weight"  # old\n'
        'layers = [\n  3,\n  4,\n]\n'
        'max_epochs = 7\n\n[gates]\nmin_locality = 0.5\n'
    )
    text = set_location_text(old, DOWN_PROJ, [2], note="new run")
    assert "an earlier run" not in text and "up_proj" not in text and text.count("# locft locate") == 1
    assert "lr = 0.01   # tuned by hand\n" in text and "# my home\n" in text
    before, after = _config(old, tmp_path), _config(text, tmp_path)
    assert after.edit.location == DOWN_PROJ and after.edit.layers == (2,)
    assert after.edit.lr == before.edit.lr and after.edit.max_epochs == 7
    assert after.gates == before.gates and after.model == before.model
    # a second run replaces its own note and lines instead of piling them up
    again = set_location_text(text, DOWN_PROJ, [5], note="third run")
    assert again.count("# locft locate") == 1 and again.count("location =") == 1
    assert _config(again, tmp_path).edit.layers == (5,)


def test_recording_keeps_the_users_comments_and_layout_byte_for_byte(tmp_path: Path) -> None:
    old = (
        "# my locft home: hand-tuned\n\n"
        "[model]   # which model\n"
        'path="/m"      # a local copy\n\n'
        "[edit]  # where and how\n"
        "  lr=0.01 # tuned by hand\n\n"
        "# the location below came from a sweep\n"
        "# locft locate: an earlier run\n"
        'location = "model.layers.{L}.mlp.up_proj.weight"\n'
        "layers = [\n  3,  # early\n  4,\n]\n"
        '"max_epochs"  =  7\n\n'
        "# gates follow\n"
        "[gates]\nmin_locality = 0.5 # loose\n"
    )
    text = set_location_text(old, DOWN_PROJ, [2], note="new run")
    # only the note and the two keys change; every other byte is the user's
    assert text == old.replace(
        "# locft locate: an earlier run\n"
        'location = "model.layers.{L}.mlp.up_proj.weight"\n'
        "layers = [\n  3,  # early\n  4,\n]\n",
        '# locft locate: new run\nlocation = "model.layers.{L}.mlp.down_proj.weight"\nlayers = [2]\n',
    )
    assert _config(text, tmp_path).edit.layers == (2,)


def test_recording_without_an_edit_table_and_a_module_location(tmp_path: Path) -> None:
    text = set_location_text('[model]\npath = "/m"', DOWN_PROJ, [1])
    assert text == '[model]\npath = "/m"\n\n[edit]\nlocation = "model.layers.{L}.mlp.down_proj.weight"\nlayers = [1]\n'
    # a location without {L} drops the layers key (it would be a config error)
    module = set_location_text(text, "model.layers.2", [])
    assert "layers =" not in module
    assert _config(module, tmp_path).edit.location == "model.layers.2"


def test_recording_refuses_what_it_cannot_edit_safely(tmp_path: Path) -> None:
    dotted = 'edit.lr = 0.01\n[model]\npath = "/m"\n'  # the [edit] table is defined by a dotted key
    with pytest.raises(ConfigError, match="set these lines in \\[edit\\] yourself"):
        set_location_text(dotted, DOWN_PROJ, [1])
    with pytest.raises(ConfigError, match="does not parse"):
        set_location_text("[edit\n", DOWN_PROJ, [1])
    with pytest.raises(ConfigError, match="max_epochs"):  # the result must still be a valid config
        set_location_text("[edit]\nmax_epochs = 0\n", DOWN_PROJ, [1])


def test_record_location_writes_atomically_keeps_the_mode_and_resolves(tmp_path: Path, loaded: LoadedModel) -> None:
    path = tmp_path / "locft.toml"
    path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
    os.chmod(path, 0o640)
    assert record_location(path, DOWN_PROJ, [1], note="n") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert choose_edit_location(loaded.model, load_config(tmp_path).edit, 10) == EditLocation(DOWN_PROJ, (1,))
    snapshot = path.read_text()
    assert record_location(path, DOWN_PROJ, [1], note="other") is False  # already so: untouched
    assert path.read_text() == snapshot
    assert [p.name for p in tmp_path.iterdir()] == ["locft.toml"]  # no temp file left behind
    missing = tmp_path / "new" / "locft.toml"
    assert record_location(missing, DOWN_PROJ, [2]) is True
    assert missing.read_text().startswith(CONFIG_TEMPLATE.split("[edit]\n")[0])
    assert load_config(missing.parent).edit.layers == (2,)
