"""`locft bench --random-init CONFIG_JSON` / `--compare-reference`: the engine's speed at any shape.

A Hugging Face config.json is enough: the model is built with random weights of that shape on
the configured device (no weights needed), with the embedded model's tokenizer (or `--tokenizer
DIR`); the vocabulary grows to the tokenizer's when the config's is smaller, and a larger one is
kept (the output head's cost is part of the shape). Random weights measure speed only: losses
and answers mean nothing, so every step runs (skip_loss and stop_loss 0).

With `compare_reference`, the cached loop and the reference loop (the paper's: full forward,
logits at every position) train on the same facts in one process, with the same rows and
tokens per pass (the cached loop's, chosen for the device unless configured), and report
seconds per edit-epoch (an epoch's seconds over the facts), their ratio, and peak memory. The
first epoch of each is warm-up and is left out when there are two or more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from locft.config import EditConfig, ModelConfig, to_dict
from locft.errors import LocftError
from locft.recorded import recorded_command, recorded_path

log = logging.getLogger(__name__)

DEFAULT_SPEED_EPOCHS = 3


@dataclass(frozen=True)
class SpeedSpec:
    data: Path
    n: int
    edit: EditConfig
    model: ModelConfig
    home: Path
    random_init: Path | None = None  # a config.json: random weights of its shape; None: the configured model
    tokenizer: Path | None = None  # an HF tokenizer directory for random init; None: the embedded model's
    compare_reference: bool = False
    data_format: str = "auto"
    offset: int = 0
    seed: int = 0
    # also time warm greedy generation of this many prompts (the facts' prompts, cycled) at the
    # device's default batch and at the CPU's 32; None: not timed
    generate_prompts: int | None = None
    # also profile this many steps of each loop in a separate run (locft.step_profile); None: not
    profile_steps: int | None = None


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    except (OSError, ValueError, KeyError) as exc:
        raise LocftError(f"{path}: not a Hugging Face config.json with a model_type ({exc})") from None


def random_init_tokenizer(directory: Path | None) -> Any:
    """The tokenizer of a random-init model: an HF tokenizer directory, or the embedded model's."""
    from transformers import AutoTokenizer

    from locft.engine.model_io import embedded_gguf_path

    if directory is not None:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    else:
        gguf = embedded_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def random_init_model(config_json: Path, model_cfg: ModelConfig, tokenizer_dir: Path | None = None,
                      seed: int = 0) -> Any:
    """A LoadedModel with random weights of `config_json`'s shape on `model_cfg`'s device and dtype."""
    from transformers import AutoModelForCausalLM

    from locft.engine.device import resolve_device
    from locft.engine.model_io import LoadedModel, _resolve_dtype

    config = _read_config(config_json)
    tok = random_init_tokenizer(tokenizer_dir)
    if int(getattr(config, "vocab_size", 0) or 0) < len(tok):
        config.vocab_size = len(tok)  # every token id must have an embedding row
    # the tokenizer's special ids, and no pad id: an embedding padding_idx would zero eos's row (pad == eos)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, None
    device = resolve_device(model_cfg.device)
    dtype = _resolve_dtype(model_cfg, device)
    torch.manual_seed(seed)
    with torch.device(device):  # weights are created where they run: no host copy of an 8B model
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return LoadedModel(model=model, tokenizer=tok, fingerprint=f"random-init-{digest[:16]}-seed{seed}",
                       source=f"random init of {config_json}", device=device, dtype=dtype)


def _shape(config: Any, model: torch.nn.Module) -> dict[str, Any]:
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "tie_word_embeddings")
    return {k: getattr(config, k, None) for k in keys} | {"parameters": sum(p.numel() for p in model.parameters())}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict[str, int]:
    from locft.benchmark import peak_rss_bytes

    peak = {"process_peak_rss_bytes": peak_rss_bytes()}  # process-wide high-water mark
    if device.type == "cuda":
        peak["device_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        peak["device_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    return peak


def time_loop(loaded: Any, facts: list[Any], cfg: EditConfig, on_event: Callable[[str, Any], None]) -> dict[str, Any]:
    """Train `cfg.max_epochs` epochs in cfg.forward_mode; seconds per edit-epoch after warm-up."""
    from locft.engine.train import edit

    _reset_peak(loaded.device)
    result = edit(loaded, facts, cfg, progress=lambda p: on_event("train", p))
    _sync(loaded.device)
    seconds = [e.seconds for e in result.epochs]
    timed = seconds[1:] if len(seconds) > 1 else seconds
    per_epoch = statistics.median(timed)
    return {
        "forward_mode_asked": cfg.forward_mode,
        "forward_mode": result.forward_mode,  # after the first-batch check (a fallback shows here)
        "s_per_edit_epoch": per_epoch / len(facts),
        "epoch_seconds": [round(s, 4) for s in seconds],
        "timed_epochs": len(timed),
        "micro_batch_size": result.config.micro_batch_size if result.config else None,
        "micro_batch_tokens": result.config.micro_batch_tokens if result.config else None,
        "steps": result.steps,
        "augmented_rows": result.n_augmented,  # prefixed copies trained beside the facts (edit.augment_prefixes)
        "cache_seconds": round(result.cache_seconds, 3),
        "setup_seconds": round(result.setup_seconds, 3),
        "shared_prefix_tokens": result.shared_prefix_tokens,
        "compute_dtype": result.compute_dtype,
        "peak_memory": _peak(loaded.device),
    }


def time_generation(loaded: Any, prompts: list[str], prompt_format: str, max_new_tokens: int,
                    baseline_batch: int = 32) -> dict[str, Any]:
    """Warm greedy generation of `prompts` at the device's default batch and at `baseline_batch`:
    one untimed call of each first (the first generate call in a process pays a one-time warm-up)."""
    from locft.engine.data import encode_prompt
    from locft.engine.device import generation_batch_size
    from locft.engine.generate import greedy_generate

    longest = max(len(encode_prompt(loaded.tokenizer, p, prompt_format)) for p in prompts)
    default = generation_batch_size(loaded.model, loaded.device, longest + max_new_tokens)
    timings: dict[int, float] = {}
    outputs: dict[int, list[Any]] = {}
    for batch in dict.fromkeys((default, baseline_batch)):  # warm-up: one batch of each size
        greedy_generate(loaded, prompts[:batch], prompt_format, max_new_tokens, batch_size=batch)
    for batch in dict.fromkeys((default, baseline_batch)):
        _sync(loaded.device)
        t = time.perf_counter()
        outputs[batch] = greedy_generate(loaded, prompts, prompt_format, max_new_tokens,
                                         batch_size=None if batch == default else batch)
        _sync(loaded.device)
        timings[batch] = time.perf_counter() - t
    same = sum(a.token_ids == b.token_ids for a, b in zip(outputs[default], outputs[baseline_batch]))
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "default_batch_size": default,
        "baseline_batch_size": baseline_batch,
        "seconds_at_default": round(timings[default], 3),
        "seconds_at_baseline": round(timings[baseline_batch], 3),
        "speedup": round(timings[baseline_batch] / timings[default], 3),
        "tokens_generated_at_default": sum(len(g.token_ids) for g in outputs[default]),
        # same greedy token ids at both batch sizes (padding differs; random weights make near-ties common)
        "same_answers_share": round(same / len(prompts), 4),
    }


def _device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "total_memory_bytes": int(props.total_memory)}


def run_speed(spec: SpeedSpec, on_event: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Measure training speed (and optionally generation) and return the JSON-ready record."""
    from locft.benchmark import environment
    from locft.checks import require_offline_data
    from locft.engine.model_io import load_base
    from locft.engine.resolve import resolve_edit_config
    from locft.readers import load_edit_facts

    emit = on_event or (lambda kind, payload: None)
    require_offline_data(spec.edit)  # augmentation's sentences (on by default): before an 8B model is built
    facts = load_edit_facts(spec.data, spec.data_format, limit=spec.offset + spec.n)[spec.offset :]
    if not facts:
        raise LocftError(f"{spec.data}: no facts after offset {spec.offset}")
    t0 = time.perf_counter()
    if spec.random_init is not None:
        emit("phase", f"building random weights of {spec.random_init}")
        loaded = random_init_model(spec.random_init, spec.model, spec.tokenizer, spec.seed)
    else:
        loaded = load_base(spec.model, spec.home)
    _sync(loaded.device)
    load_seconds = time.perf_counter() - t0
    weights_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    # every step runs (random weights never converge; a real model must not skip steps while timed)
    asked = replace(spec.edit, skip_loss=0.0, stop_loss=0.0, forward_mode="cached" if spec.compare_reference
                    else spec.edit.forward_mode)
    cfg = resolve_edit_config(loaded, asked, len(facts))
    configs = {cfg.forward_mode: cfg}
    if spec.compare_reference:  # the same rows and tokens per pass as the cached loop: the comparison is of the loops
        configs["reference"] = replace(cfg, forward_mode="reference")
    loops: dict[str, dict[str, Any]] = {}
    for mode, loop_cfg in configs.items():
        emit("phase", f"training {cfg.max_epochs} epochs over {len(facts)} facts ({mode})")
        loops[mode] = time_loop(loaded, facts, loop_cfg, emit)
    if spec.profile_steps:
        from locft.step_profile import profile_loop

        for mode, loop_cfg in configs.items():
            emit("phase", f"profiling {spec.profile_steps} steps of the {mode} loop")
            loops[mode]["profile"] = profile_loop(loaded, facts, loop_cfg, spec.profile_steps)
    speed: dict[str, Any] = {f"{mode}_s_per_edit_epoch": loop["s_per_edit_epoch"] for mode, loop in loops.items()}
    if spec.compare_reference:
        speed["ratio"] = loops["reference"]["s_per_edit_epoch"] / loops["cached"]["s_per_edit_epoch"]
        if loops["cached"]["forward_mode"] != "cached":
            log.warning("the cached loop fell back to %s: the ratio compares two reference loops",
                        loops["cached"]["forward_mode"])
    speed["loops"] = loops
    generation = None
    if spec.generate_prompts:
        emit("phase", f"timing greedy generation of {spec.generate_prompts} prompts")
        pool = [f.prompt for f in facts]
        prompts = [pool[i % len(pool)] for i in range(spec.generate_prompts)]
        generation = time_generation(loaded, prompts, cfg.prompt_format, cfg.max_new_tokens)
    return {
        "kind": "speed",
        "data": recorded_path(spec.data),
        "n": len(facts),
        "offset": spec.offset,
        "epochs": cfg.max_epochs,
        "model": {"source": loaded.source, "fingerprint": loaded.fingerprint, "dtype": str(loaded.dtype),
                  "weights_bytes": weights_bytes, "shape": _shape(loaded.config, loaded.model),
                  "random_init": str(spec.random_init) if spec.random_init is not None else None},
        "device": _device_info(loaded.device),
        "load_seconds": round(load_seconds, 2),
        "config": to_dict(cfg),
        "speed": speed,
        "generation": generation,
        "environment": environment(),
        "command": recorded_command(),
    }


def speed_table(record: dict[str, Any]) -> str:
    """The record's headline numbers, one per line."""
    speed, loops = record["speed"], record["speed"]["loops"]
    rows: list[tuple[str, str]] = [
        ("model", f"{record['model']['source']} ({record['model']['shape']['parameters'] / 1e9:.3f}B parameters, "
                  f"{record['model']['dtype']})"),
        ("device", record["device"].get("name", record["device"]["type"])),
        ("facts / epochs", f"{record['n']} / {record['epochs']} (first epoch is warm-up)"),
        ("batch / location", f"{record['config']['batch_size']} / {record['config']['location']} "
                             f"{record['config']['layers']}"),
        ("augmented copies per fact", str(record["config"]["augment_prefixes"])),
    ]
    for mode, loop in loops.items():
        peak = loop["peak_memory"].get("device_peak_allocated_bytes", loop["peak_memory"]["process_peak_rss_bytes"])
        rows.append((f"{mode} s per edit-epoch", f"{loop['s_per_edit_epoch']:.6f} ({loop['micro_batch_size']} rows / "
                                                 f"{loop['micro_batch_tokens']} tokens per pass, peak "
                                                 f"{peak / 2**30:.2f} GiB, ran {loop['forward_mode']})"))
    if "ratio" in speed:
        rows.append(("reference / cached", f"{speed['ratio']:.2f}x"))
    for mode, loop in loops.items():
        profile = loop.get("profile")
        if profile and profile.get("steps"):
            busy = profile["device"]
            rows.append((f"{mode} profile", f"{profile['wall_ms_per_step']} ms a step, {profile['operators_per_step']} "
                                            "operators" + (f", {busy['kernels_per_step']} kernels, "
                                                           f"{busy['host_syncs_per_step']} host syncs, device busy "
                                                           f"{busy['busy_share']:.0%}" if busy else "")))
    gen = record.get("generation")
    if gen:
        rows.append(("generation", f"{gen['prompts']} x {gen['max_new_tokens']}: {gen['seconds_at_default']} s at "
                                   f"batch {gen['default_batch_size']}, {gen['seconds_at_baseline']} s at "
                                   f"{gen['baseline_batch_size']} ({gen['speedup']}x)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
