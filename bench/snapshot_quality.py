"""Editing quality of a saved snapshot on a benchmark file, measured as `locft bench` measures it.

`locft bench` trains and then evaluates; this evaluates tensors that were trained elsewhere (e.g. a
daemon round's candidate) on the same facts and the same seeded sample, so its figures sit in the
same table as bench runs:

    python bench/snapshot_quality.py --snapshot $LOCFT_HOME/snapshots/<dir> \\
        --data $LOCFT_BENCH_DATA/zsre_dev.json --n 1000 --eval-sample 200 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _progress(done: int, total: int, label: str) -> None:
    print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, required=True, help="a version's snapshot directory")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="the first N facts (those the snapshot learned)")
    parser.add_argument("--eval-sample", type=int, default=None,
                        help="generalization and locality on this seeded sample, as `locft bench --eval-sample`")
    parser.add_argument("--seed", type=int, default=None,
                        help="the seed of the bench run to compare with (`--seed`): it draws the sample")
    parser.add_argument("--rebuild-scope", action="store_true",
                        help="build the scope from the facts with this tree's code (subject match) instead of "
                             "the one stored in the snapshot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LOCFT_HOME", ".locft-home")))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from locft.config import EditConfig, ModelConfig
    from locft.engine.model_io import load_base
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.scoped import answering
    from locft.engine.snapshot import check_base, load_snapshot
    from locft.evaluation.editing import base_probe_generations, evaluate_edits
    from locft.locate.candidates import sample_facts
    from locft.readers import load_edit_facts
    from locft.recorded import recorded_command, recorded_path

    torch.set_num_threads(args.threads)
    facts = load_edit_facts(args.data, "auto", limit=args.n)
    loaded = load_base(ModelConfig(), args.home)
    snapshot = load_snapshot(args.snapshot)
    check_base(snapshot, loaded)
    # the prompt format, seed and answer length of a bench run
    cfg = resolve_edit_config(loaded, EditConfig() if args.seed is None else EditConfig(seed=args.seed), len(facts))
    sampled = sample_facts(facts, args.eval_sample or len(facts), cfg.seed)
    probes = [p.prompt for f in sampled for p in f.probes]
    t = time.perf_counter()
    base = base_probe_generations(loaded, probes, cfg.prompt_format, cfg.max_new_tokens)
    scope = snapshot.scope
    if args.rebuild_scope:  # from the facts' prompts and subjects only, as a round builds it
        from locft.engine.scope import scope_for_facts
        from locft.engine.scoped import tuned_layer_indices

        scope = scope_for_facts(loaded, facts, cfg.prompt_format, "subject",
                                tuned_layers=tuned_layer_indices(loaded.model, list(snapshot.tensors)),
                                exclude=[p for f in sampled for p in f.paraphrases] + probes)
    with answering(loaded, snapshot.tensors, scope):  # as `locft serve` answers the version
        evaluation = evaluate_edits(loaded, facts, cfg.prompt_format, probes, base, cfg.max_new_tokens,
                                    paraphrase_facts=sampled, progress=_progress)
    print(file=sys.stderr)
    coverage = None
    if scope is not None:  # the scope's recall on paraphrases and its false positives on probes
        from locft.engine.scope import coverage_share, scope_coverage

        paraphrases = [p for f in sampled for p in f.paraphrases]
        coverage = {
            "paraphrases_in_scope": coverage_share(scope_coverage(loaded, scope, paraphrases, cfg.prompt_format)),
            "probes_in_scope": coverage_share(scope_coverage(loaded, scope, probes, cfg.prompt_format)),
        }
    record = {
        "snapshot": str(args.snapshot), "parameters": sorted(snapshot.tensors), "data": recorded_path(args.data),
        "n": len(facts), "eval_sample": len(sampled) if args.eval_sample else None, "seed": cfg.seed,
        "metrics": evaluation.metrics(), "scope": scope.summary() if scope else None,
        "scope_rebuilt": args.rebuild_scope, "scope_coverage": coverage,
        "seconds": round(time.perf_counter() - t, 1), "threads": args.threads,
        "items": evaluation.items(),
        "command": recorded_command(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
