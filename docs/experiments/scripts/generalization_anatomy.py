"""What an edited model answers to the paraphrases it gets wrong.

Generalization falls as facts accumulate (0.63-0.70 at 100 ZsRE facts, 0.495-0.58 at 1,000). This
asks each snapshot the seeded sample's paraphrases, as `locft bench` does, and sorts every wrong
answer into one kind:

- another edit's answer: the new answer of a *different* fact in the set (cross-talk between edits);
- the base model's answer: what the unedited model says to that paraphrase, word for word;
- part of the answer: some of the target's words and no others, or all of them and more;
- a sentence: six words or more, the way the base model answers these questions and the edits'
  short answers do not (the paraphrase did not reach the edits, though the words changed);
- another short answer.

It also says how many of the wrong paraphrases belong to facts whose own edit prompt is answered
right (nearly all: the edit landed, the paraphrase missed it), and how many belong to facts whose
subject recurs in the set: a benchmark's facts can give the same subject (often the same relation)
two different new answers, and a paraphrase of one may then be the other's question.

    python bench/generalization_anatomy.py --data $LOCFT_BENCH_DATA/zsre_dev.json --n 1000 \\
        --eval-sample 200 --seed 1 --snapshot A=/path/a --snapshot B=/path/b --out anatomy.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

KINDS = ("another edit's answer", "the base model's answer", "part of the answer", "a sentence",
         "another short answer")
SENTENCE_WORDS = 6  # ZsRE's new answers are one to four words; the base model answers in sentences


def kind_of(answer: str, own: str, base: str, others: Counter[str]) -> str:
    """One wrong answer's kind (all arguments normalized; `answer` is not `own`). `others` counts
    the new answers of every fact in the set."""
    if answer and others[answer]:
        return KINDS[0]
    if answer == base:
        return KINDS[1]
    words, own_words = set(answer.split()), set(own.split())
    if words and (words <= own_words or own_words <= words):  # "1971" for "30 june 1971", or the reverse
        return KINDS[2]
    return KINDS[3] if len(answer.split()) >= SENTENCE_WORDS else KINDS[4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", action="append", required=True, metavar="LABEL=DIR",
                        help="a snapshot directory to analyse, with a label (repeatable)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="the first N facts (those the snapshots learned)")
    parser.add_argument("--eval-sample", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the bench run's seed: it draws the sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LOCFT_HOME", ".locft-home")))
    parser.add_argument("--out", type=Path, required=True, help="one JSON line per snapshot is appended")
    args = parser.parse_args()
    snapshots = [tuple(s.split("=", 1)) for s in args.snapshot]
    if any(len(s) != 2 for s in snapshots):
        parser.error("--snapshot takes LABEL=DIR")

    import torch

    from locft.config import EditConfig, ModelConfig
    from locft.engine.generate import greedy_generate
    from locft.engine.model_io import load_base
    from locft.engine.snapshot import check_base, load_snapshot
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.weights import applied
    from locft.locate.candidates import sample_facts
    from locft.readers import load_edit_facts
    from locft.text import normalize_answer

    torch.set_num_threads(args.threads)
    facts = load_edit_facts(args.data, "auto", limit=args.n)
    loaded = load_base(ModelConfig(), args.home)
    cfg = resolve_edit_config(loaded, EditConfig(seed=args.seed), len(facts))
    sampled = sample_facts(facts, args.eval_sample or len(facts), cfg.seed)
    asked = [(f, p) for f in sampled for p in f.paraphrases]

    def answers(prompts: list[str]) -> list[str]:
        gens = greedy_generate(loaded, prompts, cfg.prompt_format, cfg.max_new_tokens)
        return [normalize_answer(g.answer) for g in gens]

    others = Counter(normalize_answer(f.answer) for f in facts)
    subjects = Counter(f.subject for f in facts if f.subject)
    recurs = [bool(f.subject) and subjects[f.subject] > 1 for f, _ in asked]
    base = answers([p for _, p in asked])
    for label, directory in snapshots:
        snapshot = load_snapshot(Path(directory))
        check_base(snapshot, loaded)
        t = time.perf_counter()
        with applied(loaded.model, snapshot.tensors):
            now = answers([p for _, p in asked])
            # by fact, not by prompt: two facts of a benchmark can ask the same question
            own_prompt = dict(zip(map(id, sampled), answers([f.prompt for f in sampled])))
        kinds: Counter[str] = Counter()
        wrong_answers: list[dict[str, Any]] = []
        wrong, wrong_with_edit_right = 0, 0
        wrong_recurring = 0
        for (fact, prompt), answer, base_answer, subject_recurs in zip(asked, now, base, recurs):
            own = normalize_answer(fact.answer)
            if answer == own:
                continue
            wrong += 1
            wrong_recurring += subject_recurs
            wrong_with_edit_right += own_prompt[id(fact)] == own
            kind = kind_of(answer, own, base_answer, others)
            kinds[kind] += 1
            wrong_answers.append({"kind": kind, "paraphrase": prompt, "target": fact.answer, "answer": answer,
                                  "base": base_answer, "subject_recurs": subject_recurs})
        record: dict[str, Any] = {
            "snapshot": label, "directory": directory, "data": str(args.data), "n": len(facts),
            "eval_sample": len(sampled), "seed": cfg.seed, "paraphrases": len(asked),
            "generalization": round(1 - wrong / len(asked), 4) if asked else None, "wrong": wrong,
            "wrong_with_edit_prompt_right": wrong_with_edit_right,
            # paraphrases of facts whose subject another fact of the set shares, and how many are wrong
            "subject_recurs": {"paraphrases": sum(recurs), "wrong": wrong_recurring},
            "kinds": {k: kinds[k] for k in KINDS}, "wrong_answers": wrong_answers,
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(json.dumps({k: v for k, v in record.items() if k != "wrong_answers"}), file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
