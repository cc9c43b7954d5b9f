"""Where token-level locality is lost: by position, by the base model's own margin, against floors.

Trains N facts with the engine defaults (plus any --set), then teacher-forces each locality
probe's base continuation through the edited model, as `locft bench` does, and splits the
agreement:

- by position in the continuation (0-3, 4-15, 16-31);
- by the BASE model's margin at that position (top-1 minus top-2 probability): a position where
  the base is nearly indifferent flips under any small change;
- against two floors: the same-size change of the tuned matrices in a random direction (how much
  of the loss is the edit's direction, not its size), and the base model run under bf16 autocast
  (how many positions flip from rounding alone).

It also reports agreement on replay prompts the training saw (seen) beside the probes (unseen),
and the relative Frobenius norm of each tuned matrix's change.

    python bench/locality_anatomy.py --n 100 --out bench/results/quality/locality_anatomy.jsonl
    python bench/locality_anatomy.py --n 100 --set replay_weight=3 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

POSITION_BUCKETS = {"0-3": range(0, 4), "4-15": range(4, 16), "16-31": range(16, 32)}
MARGIN_BUCKETS = {"<0.1": (0.0, 0.1), "0.1-0.3": (0.1, 0.3), "0.3-0.6": (0.3, 0.6), ">=0.6": (0.6, 2.0)}


def _agreement(loaded: Any, prompts: Sequence[str], token_ids: Sequence[Sequence[int]], fmt: str
               ) -> tuple[list[int], list[bool], list[float]]:
    """Per target position (flattened): its offset in the continuation, whether the model's argmax
    is the given token, and the model's own top-1 minus top-2 probability there."""
    from locft.engine.data import collate, encode_prompt, example_from_ids

    tok = loaded.tokenizer
    examples = [example_from_ids(encode_prompt(tok, p, fmt), ids) for p, ids in zip(prompts, token_ids) if ids]
    offsets: list[int] = []
    hits: list[bool] = []
    margins: list[float] = []
    with torch.no_grad():
        for b in range(0, len(examples), 32):
            chunk = examples[b : b + 32]
            batch = collate(chunk, tok.pad_token_id, loaded.device)
            logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            selected = logits[batch.rows, batch.cols].float()
            top2 = selected.softmax(-1).topk(2, dim=-1).values
            starts = torch.tensor([chunk[r].prompt_len - 1 for r in batch.rows.tolist()])
            offsets += (batch.cols.cpu() - starts).tolist()
            hits += (selected.argmax(-1) == batch.labels).tolist()
            margins += (top2[:, 0] - top2[:, 1]).tolist()
    return offsets, hits, margins


def _share(hits: Sequence[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(os.environ.get("LOCFT_BENCH_DATA", ""), "zsre_dev.json"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--probes", type=int, default=200, help="at most this many locality probes")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append the record as one JSON line")
    args = parser.parse_args(argv)

    from locft.config import EditConfig, load_config, parse_setting, with_settings
    from locft.engine.model_io import load_base
    from locft.engine.replay import replay_for
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.train import edit
    from locft.engine.weights import applied, parameters_by_name
    from locft.evaluation.editing import base_probe_generations
    from locft.home import Home
    from locft.readers import load_edit_facts

    if args.threads:
        torch.set_num_threads(args.threads)
    home = Home.resolve(None)
    config = load_config(home.root)
    cfg = with_settings(EditConfig(), dict(parse_setting(s) for s in args.settings), "--set")
    facts = load_edit_facts(args.data, "auto", limit=args.n)
    loaded = load_base(config.model, home.root)
    cfg = resolve_edit_config(loaded, cfg, len(facts))
    fmt = cfg.prompt_format
    probes = [p.prompt for f in facts for p in f.probes][: args.probes]
    base = base_probe_generations(loaded, probes, fmt, cfg.max_new_tokens)
    base_ids = [g.token_ids for g in base]
    evaluated = [f.prompt for f in facts] + [p for f in facts for p in f.paraphrases] + probes
    replay = replay_for(loaded, cfg, fmt, len(facts), exclude=evaluated, cache_dir=home.root / "cache")
    _, _, base_margins = _agreement(loaded, probes, base_ids, fmt)

    t0 = time.perf_counter()
    result = edit(loaded, facts, cfg, replay=replay)
    train_seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        "data": Path(args.data).name, "n": len(facts), "n_probes": len(probes), "settings": args.settings,
        "layers": list(cfg.layers or ()), "epochs": len(result.epochs), "converged": result.converged,
        "final_loss": round(result.epochs[-1].mean_loss, 4), "train_seconds": round(train_seconds, 1),
    }
    with applied(loaded.model, result.tensors):
        offsets, hits, _ = _agreement(loaded, probes, base_ids, fmt)
        record["token_locality"] = _share(hits)
        record["by_position"] = {k: _share([h for o, h in zip(offsets, hits) if o in r])
                                 for k, r in POSITION_BUCKETS.items()}
        record["by_base_margin"] = {
            k: {"agreement": _share([h for h, m in zip(hits, base_margins) if lo <= m < hi]),
                "positions": sum(1 for m in base_margins if lo <= m < hi),
                "share_of_flips": round(sum(1 for h, m in zip(hits, base_margins) if lo <= m < hi and not h)
                                        / max(1, hits.count(False)), 3)}
            for k, (lo, hi) in MARGIN_BUCKETS.items()
        }
        seen = replay[: args.probes]
        _, seen_hits, _ = _agreement(loaded, [r.prompt for r in seen], [r.token_ids for r in seen], fmt)
        record["replay_prompts_seen_in_training"] = _share(seen_hits)

    originals = parameters_by_name(loaded.model, list(result.tensors))
    generator = torch.Generator().manual_seed(cfg.seed)
    random_same_norm: dict[str, torch.Tensor] = {}
    record["delta_relative_norm"] = {}
    for name, tuned in result.tensors.items():
        original = originals[name].detach()
        delta = tuned.to(original.device) - original
        noise = torch.randn(delta.shape, generator=generator).to(original.device)
        random_same_norm[name] = original + noise * (delta.norm() / noise.norm())
        record["delta_relative_norm"][name] = round(float(delta.norm() / original.norm()), 4)
    with applied(loaded.model, random_same_norm):
        record["floor_random_direction_same_norm"] = _share(_agreement(loaded, probes, base_ids, fmt)[1])
    with torch.autocast(loaded.device.type, dtype=torch.bfloat16):
        record["floor_base_under_bf16"] = _share(_agreement(loaded, probes, base_ids, fmt)[1])

    print(json.dumps(record, indent=2))
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
