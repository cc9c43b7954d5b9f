"""How other scope constructions would do on a finished `locft bench` run, from its per-item results.

A scoped version answers an in-scope prompt with its tuned tensors and any other prompt with the
base model, exactly. So once a run has each item's result with the tensors on every prompt
(`items_unscoped`) and the base model's answers, any scope's metrics follow from which items it
lets in: an in-scope item scores as unscoped, an out-of-scope one as the base (exact locality 1,
token locality 1, generalization and reliability as the base answered). This script builds each
variant's scope from the run's facts (prompts and subjects only), asks which paraphrases, probes
and edit prompts it covers, and derives the metrics. The run's own `metrics` (measured through
its scope) are printed beside the same derivation for its scope, as a check.

    python bench/scope_variants.py --record bench/results/scope/zsre_n1000.json \\
        --out bench/results/scope/zsre_n1000_variants.json

Variants: subject match with the data's subjects ("given") or with subjects found in each prompt
("found", as for facts added without one), representation similarity (threshold calibrated on
generic prompts at 1% false positives), and either of the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True, help="a `locft bench` JSON with items_unscoped")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LOCFT_HOME", ".locft-home")))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--false-positive-rate", type=float, default=0.01)
    parser.add_argument("--variants", default=None,
                        help="run only these, comma-separated: subject-given, subject-found, similarity, "
                             "either-given, either-found (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from locft.config import EditConfig, ModelConfig
    from locft.engine.generate import greedy_generate
    from locft.engine.model_io import load_base
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.scope import scope_coverage, scope_for_facts
    from locft.errors import ConfigError
    from locft.locate.candidates import sample_facts
    from locft.readers import load_edit_facts
    from locft.recorded import expand_recorded_path, recorded_command
    from locft.text import exact_match

    torch.set_num_threads(args.threads)
    record = json.loads(args.record.read_text())
    if not record.get("items_unscoped"):
        parser.error("the record has no items_unscoped: run `locft bench` with --scope gated")
    try:
        data = expand_recorded_path(record["data"])
    except ConfigError as exc:
        parser.error(str(exc))
    facts = load_edit_facts(data, "auto", limit=record["offset"] + record["n"])[record["offset"]:]
    loaded = load_base(ModelConfig(), args.home)
    cfg = resolve_edit_config(loaded, EditConfig(seed=record["config"]["seed"]), len(facts))
    fmt = record["config"]["prompt_format"]
    sampled = sample_facts(facts, record["eval_sample"] or len(facts), cfg.seed)
    paraphrases = [(p, f.answer) for f in sampled for p in f.paraphrases]
    probes = [p.prompt for f in sampled for p in f.probes]
    unscoped = record["items_unscoped"]
    assert len(unscoped["generalization"]) == len(paraphrases) and len(unscoped["locality_exact"]) == len(probes)

    t = time.perf_counter()
    base_para = greedy_generate(loaded, [p for p, _ in paraphrases], fmt, cfg.max_new_tokens)
    base_para_ok = [int(exact_match(g.answer, a)) for g, (_, a) in zip(base_para, paraphrases)]
    tuned_layers = [int(x) for x in record["config"]["location"].split(".layers.")[1].split(".")[0].split(",")]
    evaluated = [p for p, _ in paraphrases] + probes
    no_subjects = [dataclasses.replace(f, subject=None) for f in facts]
    variants = {
        "subject, given": ("subject", facts),
        "subject, found": ("subject", no_subjects),
        "similarity": ("similarity", facts),
        "either, given": ("either", facts),
        "either, found": ("either", no_subjects),
    }
    if args.variants:
        wanted = {w.strip() for w in args.variants.split(",")}
        variants = {label: v for label, v in variants.items() if label.replace(", ", "-") in wanted}
        if len(variants) != len(wanted):
            parser.error(f"unknown variant in --variants {args.variants!r}")
    base_rel: dict[int, int] = {}  # base reliability of edit prompts some variant leaves out
    out: dict[str, Any] = {}
    for label, (match, scoped_facts) in variants.items():
        scope = scope_for_facts(loaded, scoped_facts, fmt, match, false_positive_rate=args.false_positive_rate,
                                tuned_layers=tuned_layers, exclude=evaluated)
        in_para = scope_coverage(loaded, scope, [p for p, _ in paraphrases], fmt)
        in_probe = scope_coverage(loaded, scope, probes, fmt)
        in_edit = scope_coverage(loaded, scope, [f.prompt for f in facts], fmt)
        missing = [i for i, ok in enumerate(in_edit) if not ok and i not in base_rel]
        if missing:
            gens = greedy_generate(loaded, [facts[i].prompt for i in missing], fmt, cfg.max_new_tokens)
            base_rel.update({i: int(exact_match(g.answer, facts[i].answer)) for i, g in zip(missing, gens)})
        rel = [u if s else base_rel[i] for i, (u, s) in enumerate(zip(unscoped["reliability"], in_edit))]
        gen = [u if s else b for u, b, s in zip(unscoped["generalization"], base_para_ok, in_para)]
        exact = [u if s else 1 for u, s in zip(unscoped["locality_exact"], in_probe)]
        token = [u if s else 1.0 for u, s in zip(unscoped["locality_token"], in_probe)]

        def mean(xs: Sequence[float]) -> float | None:
            return round(sum(xs) / len(xs), 4) if xs else None

        out[label] = {
            "scope": scope.summary(),
            "edit_prompts_in_scope": mean([int(x) for x in in_edit]),
            "recall": mean([int(x) for x in in_para]),
            "false_positive_rate": mean([int(x) for x in in_probe]),
            "derived_metrics": {"reliability": mean(rel), "generalization": mean(gen),
                                "locality_exact": mean(exact), "locality_token": mean(token)},
        }
        print(label, json.dumps(out[label]), file=sys.stderr)
    result = {
        "record": str(args.record), "data": record["data"], "n": record["n"], "eval_sample": record["eval_sample"],
        "measured_metrics": record["metrics"], "measured_scope": record.get("scope"),
        "scope_subjects": record.get("scope_subjects"),
        "base_generalization": round(sum(base_para_ok) / len(base_para_ok), 4) if base_para_ok else None,
        "variants": out, "seconds": round(time.perf_counter() - t, 1), "threads": args.threads,
        "command": recorded_command(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v["derived_metrics"] | {"recall": v["recall"], "fp": v["false_positive_rate"]}
                      for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
