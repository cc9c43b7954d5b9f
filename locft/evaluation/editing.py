"""Edit quality by greedy generation and normalized exact match (never teacher-forced answers).

- reliability: the edit prompt's generated answer matches the new answer;
- generalization: the same on each paraphrase;
- locality (exact): an unrelated probe's cut answer is unchanged from the base model's;
- locality (token): the base model's own continuation of a probe, fed to the edited model,
  is reproduced token by token (share of positions whose argmax equals the base token).
Measures only: deciding is locft.policies.gating's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from locft.engine.data import collate, encode_prompt, example_from_ids
from locft.engine.generate import Generation, greedy_generate
from locft.engine.model_io import LoadedModel
from locft.engine.scoped import deciding_on_prompts
from locft.evaluation.progress import EvaluationProgress
from locft.facts import EditFact
from locft.text import exact_match, normalize_answer


@dataclass
class EditEvaluation:
    reliability: float
    generalization: float | None
    locality_exact: float | None
    locality_token: float | None
    n_facts: int
    n_paraphrases: int
    n_probes: int
    correct: list[bool] = field(default_factory=list)  # per fact, edit prompt (for retention)
    samples: list[dict[str, str]] = field(default_factory=list)  # a few answers to show
    # per item, in the order asked, so that two runs on the same facts can be compared item by item
    paraphrase_correct: list[bool] = field(default_factory=list)
    probe_exact: list[bool] = field(default_factory=list)
    probe_token: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        d = asdict(self)
        for per_item in ("correct", "samples", "paraphrase_correct", "probe_exact", "probe_token"):
            d.pop(per_item)
        return d

    def items(self) -> dict[str, list[float]]:
        """Every item's score, keyed like `metrics()` (1/0 for exact matches, a share for tokens)."""
        return {
            "reliability": [int(c) for c in self.correct],
            "generalization": [int(c) for c in self.paraphrase_correct],
            "locality_exact": [int(c) for c in self.probe_exact],
            "locality_token": [round(t, 4) for t in self.probe_token],
        }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def token_agreement(
    loaded: LoadedModel,
    prompts: Sequence[str],
    base: Sequence[Generation],
    prompt_format: str,
    batch_size: int = 32,
) -> list[float]:
    """Per prompt: share of the base continuation's tokens that the current model's argmax reproduces."""
    tok = loaded.tokenizer
    examples = [
        example_from_ids(encode_prompt(tok, p, prompt_format), g.token_ids) for p, g in zip(prompts, base)
    ]
    scores = [1.0] * len(examples)
    order = [i for i in sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids)) if base[i].token_ids]
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = collate([examples[i] for i in idx], tok.pad_token_id, loaded.device)
            # a scoped version decides on the probe alone, as when it generated the continuation
            with deciding_on_prompts([examples[i].prompt_len for i in idx]):
                logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            hits = (logits[batch.rows, batch.cols].argmax(-1) == batch.labels).float()
            per = torch.zeros(len(idx), device=hits.device).index_add_(0, batch.rows, hits)
            for j, i in enumerate(idx):
                scores[i] = float(per[j]) / len(examples[i].input_ids[examples[i].prompt_len :])
    return scores


def base_probe_generations(
    loaded: LoadedModel, prompts: Sequence[str], prompt_format: str, max_new_tokens: int
) -> list[Generation]:
    """The base model's answers to probe prompts: call on the unedited model, cache per fingerprint."""
    return greedy_generate(loaded, prompts, prompt_format, max_new_tokens)


def evaluate_edits(
    loaded: LoadedModel,
    facts: Sequence[EditFact],
    prompt_format: str,
    probe_prompts: Sequence[str] = (),
    base_probes: Sequence[Generation] = (),
    max_new_tokens: int = 32,
    progress: EvaluationProgress | None = None,
    n_samples: int = 5,
    paraphrase_facts: Sequence[EditFact] | None = None,
) -> EditEvaluation:
    """Evaluate the model as it is now (apply the edit first) against the facts and probes.

    Reliability covers every fact; generalization the paraphrases of `paraphrase_facts`
    (default: all facts), so that a large benchmark can sample it.
    """
    if len(probe_prompts) != len(base_probes):
        raise ValueError("probe_prompts and base_probes must have the same length")

    def gen(label: str, prompts: Sequence[str]) -> list[Generation]:
        cb = (lambda done, total: progress(done, total, label)) if progress else None
        return greedy_generate(loaded, prompts, prompt_format, max_new_tokens, progress=cb)

    answers = gen("reliability", [f.prompt for f in facts])
    correct = [exact_match(g.answer, f.answer) for g, f in zip(answers, facts)]
    para_pairs = [(p, f.answer) for f in (facts if paraphrase_facts is None else paraphrase_facts)
                  for p in f.paraphrases]
    para_answers = gen("generalization", [p for p, _ in para_pairs]) if para_pairs else []
    para_correct = [exact_match(g.answer, a) for g, (_, a) in zip(para_answers, para_pairs)]
    loc_exact: list[bool] = []
    loc_token: list[float] = []
    if probe_prompts:
        now = gen("locality", probe_prompts)
        loc_exact = [normalize_answer(a.answer) == normalize_answer(b.answer) for a, b in zip(now, base_probes)]
        loc_token = token_agreement(loaded, probe_prompts, base_probes, prompt_format)
    samples = [
        {"prompt": f.prompt, "target": f.answer, "answer": g.answer} for f, g in list(zip(facts, answers))[:n_samples]
    ]
    return EditEvaluation(
        reliability=_mean([float(c) for c in correct]) or 0.0,
        generalization=_mean([float(c) for c in para_correct]),
        locality_exact=_mean([float(e) for e in loc_exact]),
        locality_token=_mean(loc_token),
        n_facts=len(facts),
        n_paraphrases=len(para_pairs),
        n_probes=len(probe_prompts),
        correct=correct,
        samples=samples,
        paraphrase_correct=para_correct,
        probe_exact=loc_exact,
        probe_token=loc_token,
    )


def scope_report(
    loaded: LoadedModel,
    scope: Any,
    facts: Sequence[EditFact],
    probe_prompts: Sequence[str],
    prompt_format: str,
    paraphrase_facts: Sequence[EditFact] | None = None,
) -> dict[str, Any] | None:
    """How the version's scope covers what the gates ask: edit prompts and paraphrases in scope
    (its recall), locality probes in scope (its false positives). None without a scope."""
    if scope is None:
        return None
    from locft.engine.scope import coverage_share, scope_coverage

    paraphrases = [p for f in (facts if paraphrase_facts is None else paraphrase_facts) for p in f.paraphrases]
    edits = scope_coverage(loaded, scope, [f.prompt for f in facts], prompt_format)
    para = scope_coverage(loaded, scope, paraphrases, prompt_format)
    probes = scope_coverage(loaded, scope, probe_prompts, prompt_format)
    return {
        **scope.summary(),
        "edit_prompts_in_scope": coverage_share(edits),
        "recall": coverage_share(para),  # paraphrases in scope
        "false_positive_rate": coverage_share(probes),  # locality probes in scope
        "n_paraphrases": len(para), "n_probes": len(probes),
    }
