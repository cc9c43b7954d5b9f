"""The one training loop of LocFT-BF.

Breadth-first (the method): epochs of shuffled mini-batches over ALL facts; Adam on the
located tensor(s) only; loss on target tokens (per-sample mean, then batch mean); a batch
whose loss is already below `skip_loss` is skipped; training stops when an epoch's mean loss
is below `stop_loss`. Depth-first (each fact alone to convergence, one after another) exists
only as the benchmark's baseline.

The loss of a batch comes from engine.forward (cached, full or reference forward), the
compute dtype from engine.precision, the per-model defaults from engine.resolve, the rows and
their layout from engine.rows; what an edit returns is in engine.result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from locft.config import EditConfig
from locft.engine.data import Example, to_device
from locft.engine.forward import Forward
from locft.engine.memory import release_freed_memory
from locft.engine.model_io import LoadedModel
from locft.engine.null_space import input_second_moments, low_energy_projector, project_change
from locft.engine.precision import autocast_dtype
from locft.engine.replay import ReplayItem
from locft.engine.resolve import resolve_edit
from locft.engine.result import EditResult, EpochStats, TrainProgress, TrainProgressCallback
from locft.engine.rows import RowLayout, training_rows
from locft.engine.weights import applied, parameters_by_name
from locft.errors import ConfigError, LocftError
from locft.facts import EditFact

log = logging.getLogger(__name__)

# rows of the forward-mode check: the reference loop computes logits at every position (a few
# hundred MiB for a full batch of chat-formatted rows), and a few rows tell the paths apart
_MODE_CHECK_ROWS = 8


class EditCancelled(LocftError):
    """Training was asked to stop (daemon shutdown); nothing was produced."""


def edit(
    loaded: LoadedModel,
    facts: Sequence[EditFact],
    cfg: EditConfig,
    progress: TrainProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    replay: Sequence[ReplayItem] | None = None,
    cache_dir: Path | None = None,
) -> EditResult:
    """Train the located tensors on `facts`; the model's own weights are left exactly as they were.

    When cfg.replay_ratio > 0, `replay` items (the base model's own continuations, see
    engine.replay) are mixed into the breadth-first batches; None builds the default pool
    (cached under `cache_dir` when given). Call on the unedited model.
    """
    if not facts:
        raise LocftError("no facts to edit")
    resolved = resolve_edit(loaded, cfg, len(facts))
    cfg, location, names = resolved.config, resolved.location, resolved.names
    prompt_format, lr = cfg.prompt_format, cfg.lr
    assert lr is not None and cfg.batch_size is not None and cfg.micro_batch_size is not None, "resolved"
    examples, layout = training_rows(loaded, facts, cfg, replay, cache_dir)
    result = EditResult({}, location, prompt_format, lr, cfg.forward_mode, n_facts=layout.n_facts,
                        n_replay=layout.n_replay, n_augmented=layout.n_augmented)
    result.config = cfg
    result.device = str(loaded.device)
    torch.manual_seed(cfg.seed)
    base = parameters_by_name(loaded.model, names)
    working = {n: p.detach().clone() for n, p in base.items()}

    with applied(loaded.model, working):
        params = list(parameters_by_name(loaded.model, names).values())
        for p in params:
            p.requires_grad_(True)
        try:
            compute_dtype = autocast_dtype(cfg.compute_dtype, loaded)
            result.compute_dtype = str(compute_dtype or loaded.dtype).removeprefix("torch.")
            forward = Forward(loaded, examples, names, cfg.forward_mode, compute_dtype)
            t0 = time.perf_counter()
            if forward.mode == "cached":
                forward.build_cache(progress)
            result.cache_seconds = time.perf_counter() - t0
            forward.check_mode(list(layout.facts[: min(cfg.batch_size, _MODE_CHECK_ROWS)]))
            result.forward_mode = forward.mode
            result.shared_prefix_tokens = forward.prefix_len if forward.mode == "cached" else 0
            if cfg.replay_target == "distribution" and layout.n_replay:
                forward.record_soft_targets(layout.replay, cfg.replay_top_k, cfg.micro_batch_size)
            loaded.model.train(False)  # dropout off: training is deterministic
            projectors: list[torch.Tensor] = []  # per tuned tensor (engine.null_space); empty: off
            if cfg.null_space_energy and cfg.pipeline == "breadth-first":
                projectors = _null_space_projectors(loaded, [examples[i] for i in layout.replay], names,
                                                    cfg.null_space_energy, result)
            t1 = time.perf_counter()
            result.setup_seconds = t1 - t0 - result.cache_seconds
            if cfg.pipeline == "breadth-first":
                _breadth_first(forward, layout, params, projectors, cfg, lr, result, progress, should_stop)
            else:
                _depth_first(forward, layout, params, cfg, lr, result, progress, should_stop)
            result.train_seconds = time.perf_counter() - t1
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        result.tensors = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in zip(names, params)}
    del forward
    release_freed_memory()  # a long-lived caller (the daemon, a server) gets the activations' pages back
    return result


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise EditCancelled("training was cancelled")


def _accumulate_gradients(
    forward: Forward, indices: Sequence[int], extra: Sequence[int], cfg: EditConfig
) -> tuple[float, float | None]:
    """Backward of (mean edit loss + replay_weight * mean replay loss) over one batch, run in
    passes of at most cfg.micro_batch_size rows and cfg.micro_batch_tokens padded tokens so that
    activation memory stays bounded; the summed gradient is the whole batch's. Returns the two
    means (replay None without replay rows)."""
    assert cfg.replay_weight is not None, "engine.resolve fills the replay weight"
    n_edit = len(indices)
    weights = [1.0 / n_edit] * n_edit + [cfg.replay_weight / max(len(extra), 1)] * len(extra)
    is_edit = [True] * n_edit + [False] * len(extra)
    # rows sorted by length, so each pass pads to its own longest row; the gradient is a sum over
    # rows and does not depend on their order
    rows = sorted(zip(list(indices) + list(extra), weights, is_edit), key=lambda r: forward.row_tokens(r[0]))
    assert cfg.micro_batch_size is not None and cfg.micro_batch_tokens is not None, "engine.resolve fills them"
    sums: torch.Tensor | None = None  # [edit, replay], summed on the device: one host sync per step
    for chunk in _passes(rows, [forward.row_tokens(r[0]) for r in rows], cfg.micro_batch_size,
                         cfg.micro_batch_tokens):
        per_sample = forward.sample_losses([r[0] for r in chunk])
        # each row's loss weight and whether it is an edit row, in one host-to-device copy
        scale_kind = to_device(torch.tensor([[r[1], float(r[2])] for r in chunk], dtype=torch.float64),
                               per_sample.device)
        (per_sample * scale_kind[:, 0].to(per_sample.dtype)).sum().backward()
        losses, is_edit_row = per_sample.detach().double(), scale_kind[:, 1] > 0
        zero = losses.new_zeros(())
        chunk_sums = torch.stack([torch.where(is_edit_row, losses, zero).sum(),
                                  torch.where(is_edit_row, zero, losses).sum()])
        sums = chunk_sums if sums is None else sums + chunk_sums
    assert sums is not None
    edit_sum, replay_sum = sums.tolist()
    return edit_sum / n_edit, (replay_sum / len(extra) if extra else None)


def _passes(rows: Sequence[Any], tokens: Sequence[int], max_rows: int, max_tokens: int) -> Iterator[list[Any]]:
    """Consecutive slices of `rows` (sorted by `tokens`, ascending) of at most `max_rows` rows
    whose padded size (rows x the last row's tokens) stays within `max_tokens`; a longer row
    goes alone."""
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and end - start < max_rows and (end + 1 - start) * tokens[end] <= max_tokens:
            end += 1
        yield list(rows[start:end])
        start = end


@torch.no_grad()
def _decay_towards(params: Sequence[torch.nn.Parameter], origins: Sequence[torch.Tensor], rate: float) -> None:
    """Shrink each parameter's change from its origin by the factor (1 - rate)."""
    if not rate:
        return
    for p, origin in zip(params, origins):
        p.sub_(rate * (p - origin))


def _null_space_projectors(loaded: LoadedModel, replay: Sequence[Example], names: Sequence[str], energy: float,
                           result: EditResult) -> list[torch.Tensor]:
    if not replay:
        raise ConfigError("edit.null_space_energy needs replay prompts (edit.replay_ratio > 0)")
    t = time.perf_counter()
    moments = input_second_moments(loaded, replay, names)
    projectors = []
    for name in names:
        projector, rank = low_energy_projector(moments[name], energy)
        projectors.append(projector.to(loaded.device))
        result.null_space_ranks[name] = rank
    log.info("null space: protected input directions %s (%.1f s)", result.null_space_ranks, time.perf_counter() - t)
    return projectors


def _breadth_first(
    forward: Forward,
    layout: RowLayout,
    params: list[torch.nn.Parameter],
    projectors: list[torch.Tensor],
    cfg: EditConfig,
    lr: float,
    result: EditResult,
    progress: TrainProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    assert cfg.batch_size is not None and cfg.replay_ratio is not None, "engine.resolve fills them"
    n = layout.n_facts
    replay_ids = list(layout.replay)
    optimizer = torch.optim.Adam(params, lr=lr)
    origins = [p.detach().clone() for p in params] if cfg.delta_decay or projectors else []
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    replay_queue: list[int] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        t_epoch = time.perf_counter()
        order = torch.randperm(n, generator=generator).tolist()
        losses: list[float] = []
        replay_losses: list[float] = []
        skipped = 0
        for step in range(steps_per_epoch):
            _check_stop(should_stop)
            indices = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            edit_rows = layout.edit_rows(indices)
            extra: list[int] = []
            if replay_ids:
                k = max(1, round(len(indices) * cfg.replay_ratio))
                while len(replay_queue) < k:  # cycle through the pool in fresh shuffled orders
                    replay_queue += [replay_ids[i] for i in torch.randperm(len(replay_ids), generator=generator)]
                extra, replay_queue = replay_queue[:k], replay_queue[k:]
            optimizer.zero_grad(set_to_none=True)
            loss, replay_loss = _accumulate_gradients(forward, edit_rows, extra, cfg)
            result.examples_seen += len(indices)
            losses.append(loss)
            if replay_loss is not None:
                replay_losses.append(replay_loss)
            if loss < cfg.skip_loss:
                skipped += 1
            else:
                optimizer.step()
                _decay_towards(params, origins, lr * cfg.delta_decay)
                if projectors:
                    project_change(params, origins, projectors)
                result.steps += 1
            if progress:
                done = (epoch - 1) * n + min((step + 1) * cfg.batch_size, n)
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress(TrainProgress("train", epoch, cfg.max_epochs, step + 1, steps_per_epoch, losses[-1], rate))
        mean = sum(losses) / len(losses)
        replay_mean = sum(replay_losses) / len(replay_losses) if replay_losses else None
        result.epochs.append(EpochStats(epoch, mean, time.perf_counter() - t_epoch, len(losses), skipped, replay_mean))
        log.info("epoch %d/%d: mean loss %.4f (%d skipped)", epoch, cfg.max_epochs, mean, skipped)
        release_freed_memory()  # lowers the next epochs' peak a little (engine.memory)
        if mean < cfg.stop_loss:
            result.converged = True
            break


def _depth_first(
    forward: Forward,
    layout: RowLayout,
    params: list[torch.nn.Parameter],
    cfg: EditConfig,
    lr: float,
    result: EditResult,
    progress: TrainProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Baseline: each fact alone, fresh Adam, up to max_epochs steps (the same per-fact step
    budget as breadth-first), stopping once its loss is below stop_loss; edits accumulate."""
    n = layout.n_facts
    started = time.perf_counter()
    all_converged = True
    for i in range(n):
        t_fact = time.perf_counter()
        optimizer = torch.optim.Adam(params, lr=lr)
        losses: list[float] = []
        for _ in range(cfg.max_epochs):
            _check_stop(should_stop)
            loss = forward.sample_losses([i]).mean()
            result.examples_seen += 1
            losses.append(loss.item())
            if losses[-1] < cfg.stop_loss:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.steps += 1
        else:
            all_converged = False
        result.epochs.append(EpochStats(i + 1, losses[-1], time.perf_counter() - t_fact, len(losses), 0))
        if progress:
            rate = (i + 1) / max(time.perf_counter() - started, 1e-9)
            progress(TrainProgress("train", i + 1, n, len(losses), cfg.max_epochs, losses[-1], rate))
    result.converged = all_converged
