"""LoRA training of the edge model on captured rows, on CPU, in a process of its own.

    python -m edge_models.distill.train --data FILE_OR_DIR --work DIR [--time-budget 30m] ...

Run by ``hybrid-router distill train`` (:mod:`edge_models.distill.pipeline`), so
torch, transformers and peft load only here, never in the gateway. What it does:

1. reads the rows, drops the permanent holdout slice (:mod:`.rows`) and replaces
   each route's fixed system prompt by its short alias (:mod:`.prefix`);
2. against forgetting, keeps the student's next-token distribution close to
   the base model's on general text (:class:`Anchor`): the base model's own
   answers to general prompts and its own free-running prose, scored against
   the base's top-k probabilities (distillation from the model being trained
   away from); optional replay rows (the base's greedy answers as plain
   targets) can be mixed in too;
3. tokenises every row through the model's own chat template and masks the
   loss to the assistant's tokens, ``<|im_end|>`` included;
4. times fp32 against bf16 autocast on the same first steps from the same
   start, and goes on with the faster one when its loss agrees;
5. fits the learning-rate schedule to the time budget, trains with a progress
   bar, and checkpoints so ``--resume`` carries on where a stop left off;
6. merges the adapter and saves a plain Hugging Face folder for the export.

It runs at low CPU priority (``--nice``) with a bounded thread count, so a
gateway on the same machine keeps serving.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_models.distill.prefix import find_fixed_prompts, student_messages
from edge_models.distill.rows import ReadReport, Row, read_rows, split_holdout
from edge_models.errors import EdgeModelError, MissingDependency

__all__ = ["TrainOptions", "TrainResult", "parse_duration", "train"]

INSTALL_HINT = "pip install 'hybrid-router[distill]'  (torch, transformers, peft)"
REPLAY_PROMPTS = Path(__file__).with_name("replay_prompts.jsonl")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``1.5h``.

    >>> parse_duration("30m"), parse_duration("90"), parse_duration("1.5h")
    (1800.0, 90.0, 5400.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass
class TrainOptions:
    data: list[Path]
    base_hf: Path
    work: Path
    time_budget_s: float = 1800.0
    epochs: float = 1.0
    max_rows: int | None = None
    batch_size: int = 16
    # 2e-3 against 1e-3: 51.5% against 34.5% holdout accuracy after 1,000 Banking77 rows (one pass, rank 16).
    learning_rate: float = 2e-3
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    warmup_share: float = 0.05
    # Plain replay rows mixed into the batches (cross-entropy on the base's greedy answers).
    replay_share: float = 0.0
    # The anchor: this many general sequences per step, their soft-target loss weighted so.
    # Two sequences (~250 tokens) add about a third to a step of 16 Banking77 rows.
    anchor_batch: int = 2
    anchor_weight: float = 1.0
    anchor_top_k: int = 32
    # Where the base model's replay answers are cached (default: in the work folder).
    replay_cache: str | None = None
    max_tokens: int = 512
    precision: str = "auto"  # auto | fp32 | bf16
    probe_steps: int = 10
    threads: int | None = None
    nice: int = 10
    seed: int = 0
    keep_prefix: bool = False
    resume: bool = False
    checkpoint_every_s: float = 120.0
    progress: bool = True
    # Save the adapter when this many rows have been seen (a learning curve from one run).
    snapshot_rows: tuple[int, ...] = ()


@dataclass
class TrainResult:
    merged: Path
    train_rows: int
    holdout_rows: int
    replay_rows: int
    steps: int
    planned_steps: int
    precision: str
    probe: dict[str, Any]
    seconds: float
    final_loss: float
    prompt_aliases: dict[str, str]
    tasks: list[str]
    data_sha256: str
    stopped_by_budget: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["merged"] = str(self.merged)
        return out


def _torch() -> Any:
    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(f"training needs the distill extra: {INSTALL_HINT}") from exc
    return torch


# -- data ---------------------------------------------------------------------------------------


def load_training_rows(options: TrainOptions, report: ReadReport) -> tuple[list[Row], int, dict[str, str]]:
    """(train rows in the student's view, holdout count, prompt aliases)."""
    rows = list(read_rows(options.data, report))
    train, holdout = split_holdout(rows)
    if options.max_rows is not None:
        random.Random(options.seed).shuffle(train)
        train = train[: options.max_rows]
    aliases = {} if options.keep_prefix else find_fixed_prompts(train)
    student = [{**row, "messages": student_messages(row["messages"], aliases)} for row in train]
    return student, len(holdout), aliases


def data_digest(rows: Sequence[Row]) -> str:
    import hashlib

    from edge_models.distill.rows import row_hash

    digest = hashlib.sha256()
    for value in sorted(row_hash(row["messages"]) for row in rows):
        digest.update(value.encode())
    return digest.hexdigest()


def replay_rows(base_onnx: Path | None, cache: Path, max_new_tokens: int = 96) -> list[Row]:
    """The base model's own greedy answers to general prompts, generated once and cached.

    Generated with the served ONNX model when one is given (what clients got
    before distillation is what the student should keep giving).
    """
    if cache.is_file():
        return [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    if base_onnx is None:
        return []
    from edge_models.runtime import EdgeModel, SamplingOptions

    model = EdgeModel.load(base_onnx)
    rows = []
    for line in REPLAY_PROMPTS.read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        messages = [{"role": "user", "content": prompt}]
        generation = model.generate(model.encode_chat(messages), SamplingOptions(max_new_tokens))
        answer = "".join(generation).strip()
        if generation.finish_reason == "stop" and answer:
            rows.append(
                {"messages": [*messages, {"role": "assistant", "content": answer}], "metadata": {"replay": True}}
            )
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


ANCHOR_SAMPLES = 48
"""Free-running samples of the base model (from ``<|endoftext|>``): its own prose, the distribution to keep."""


def anchor_rows(base_onnx: Path | None, cache: Path, replay: Sequence[Row], max_new_tokens: int = 128) -> list[Row]:
    """General text the student must keep predicting as the base model does, generated once and cached.

    Two kinds: the replay answers as chats (the assistant's tokens are scored)
    and the base model's own samples from an empty context at temperature 0.8
    (every token is scored), so chat and plain language modelling both stay put.
    """
    if cache.is_file():
        return [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    rows: list[Row] = [{"messages": row["messages"], "metadata": {"anchor": "chat"}} for row in replay]
    if base_onnx is not None:
        import numpy as np

        from edge_models.runtime import EdgeModel, SamplingOptions

        model = EdgeModel.load(base_onnx)
        for seed in range(ANCHOR_SAMPLES):
            options = SamplingOptions(max_new_tokens, temperature=0.8, top_p=0.95, seed=seed)
            text = "".join(model.generate(np.array([0], dtype=np.int32), options)).strip()
            if len(text) >= 80:
                rows.append({"text": text, "metadata": {"anchor": "text"}})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def tokenize(tokenizer: Any, messages: Sequence[Row], max_tokens: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels: every assistant message's tokens (and its ``<|im_end|>``) are learned, nothing else.

    The whole conversation is rendered once through the chat template and the
    labelled character spans are mapped to tokens with the tokenizer's offsets,
    so the ids are exactly those the served model sees.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans = []
    cursor = 0
    for message in messages:
        start = text.find(message["content"], cursor)
        if start < 0:
            return None
        end = start + len(message["content"])
        cursor = end
        if message["role"] == "assistant":
            close = text.find("<|im_end|>", end)
            spans.append((start, close + len("<|im_end|>") if close >= 0 else end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    if len(ids) > max_tokens:
        return None
    labels = [IGNORE] * len(ids)
    for index, (a, b) in enumerate(encoded["offset_mapping"]):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[index] = ids[index]
    if all(label == IGNORE for label in labels):
        return None
    return ids, labels


def tokenize_anchor(tokenizer: Any, row: Row, max_tokens: int) -> tuple[list[int], list[int]] | None:
    """Ids and scored positions of an anchor row: a chat's assistant tokens, or every token of plain text."""
    if "messages" in row:
        return tokenize(tokenizer, row["messages"], max_tokens)
    # Token 0 (<|endoftext|>) first, as the perplexity guard reads prose: the first word is predicted too.
    ids = [0, *tokenizer(row["text"], add_special_tokens=False)["input_ids"]][:max_tokens]
    return (ids, [IGNORE, *ids[1:]]) if len(ids) > 1 else None


# -- training -----------------------------------------------------------------------------------


class Anchor:
    """Soft targets from the base model on general text, and the loss that keeps the student near them.

    The base's top-k next-token probabilities (renormalised) at every scored
    position are computed once, before training; each step scores a few of the
    sequences with the student and adds the cross-entropy against those
    targets (the KL divergence up to a constant). Unlike replaying the base's
    greedy answers, every position carries the whole shape of the base's
    distribution, which is what the perplexity guard and general answers need.
    """

    def __init__(self, torch: Any, sequences: Sequence[tuple[list[int], list[int]]], *, batch: int, top_k: int,
                 pad: int, seed: int) -> None:  # fmt: skip
        self.torch = torch
        self.sequences = list(sequences)
        self.batch = max(1, min(batch, len(self.sequences)))
        self.top_k = top_k
        self.pad = pad
        self.order = list(range(len(self.sequences)))
        random.Random(seed).shuffle(self.order)
        self.targets: list[tuple[Any, Any]] = []

    def fit(self, model: Any) -> None:
        """The base model's soft targets (``model``: a fresh LoRA model, whose delta is still zero)."""
        torch = self.torch
        with torch.inference_mode():
            for ids, labels in self.sequences:
                logits = self._logits(model, [(ids, labels)])
                top = torch.log_softmax(logits.float(), dim=-1).topk(self.top_k, dim=-1)
                probs = torch.softmax(top.values, dim=-1)  # renormalised over the top k
                self.targets.append((top.indices.clone(), probs.clone()))

    def _logits(self, model: Any, examples: Sequence[tuple[list[int], list[int]]]) -> Any:
        return _labelled_logits(model, *_collate(self.torch, examples, self.pad))

    def loss(self, model: Any, step: int) -> Any:
        torch = self.torch
        picks = [self.order[(step * self.batch + i) % len(self.order)] for i in range(self.batch)]
        logits = self._logits(model, [self.sequences[i] for i in picks])
        indices = torch.cat([self.targets[i][0] for i in picks])
        probs = torch.cat([self.targets[i][1] for i in picks])
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, indices)
        return -(probs * logp).sum(-1).mean()


def _make_anchor(torch: Any, options: TrainOptions, tokenizer: Any, rows: Sequence[Row], pad: int) -> Anchor | None:
    if options.anchor_batch <= 0:
        return None
    sequences = [e for row in rows if (e := tokenize_anchor(tokenizer, row, min(options.max_tokens, 160)))]
    if not sequences:
        return None
    anchor = Anchor(torch, sequences, batch=options.anchor_batch, top_k=options.anchor_top_k, pad=pad,
                    seed=options.seed)  # fmt: skip
    return anchor


def _batches(examples: Sequence[tuple[list[int], list[int]]], size: int, seed: int, steps: int) -> Iterator[list[int]]:
    """Index batches for ``steps`` steps: shuffled each epoch, then grouped by length to cut padding."""
    rng = random.Random(seed)
    produced = 0
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        # Length grouping inside windows of 32 batches keeps the order random but padding small.
        window = size * 32
        for lo in range(0, len(order), window):
            chunk = sorted(order[lo : lo + window], key=lambda i: len(examples[i][0]))
            groups = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            rng.shuffle(groups)
            for group in groups:
                if produced == steps:
                    return
                produced += 1
                yield group


def _collate(torch: Any, examples: Sequence[tuple[list[int], list[int]]], pad: int) -> tuple[Any, Any, Any]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, : len(targets)] = torch.tensor(targets)
        mask[row, : len(tokens)] = 1
    return ids, labels, mask


def _labelled_logits(model: Any, ids: Any, labels: Any, mask: Any) -> Any:
    """Next-token logits at the labelled positions only: the vocabulary projection runs on those tokens alone.

    The lm_head is a fifth of the model's compute per token; a Banking77 row has
    ~46 tokens of which ~7 are learned, so projecting only those saves most of it.
    """
    inner = model.get_base_model()
    hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return inner.lm_head(hidden[:, :-1][labels[:, 1:] != IGNORE])


def _loss(torch: Any, model: Any, ids: Any, labels: Any, mask: Any) -> Any:
    """Cross-entropy on the labelled positions only."""
    shifted = labels[:, 1:]
    logits = _labelled_logits(model, ids, labels, mask)
    return torch.nn.functional.cross_entropy(logits.float(), shifted[shifted != IGNORE])


class _Checkpoint:
    """Adapter, optimiser, schedule and position, written atomically (``--resume`` reads it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, torch: Any, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        from peft import get_peft_model_state_dict

        torch.save(
            {
                "adapter": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "state.pt",
        )
        (tmp / "progress.json").write_text(json.dumps(state))
        if self.folder.exists():
            old = self.folder.with_name(self.folder.name + ".old")
            os.replace(self.folder, old)
            os.replace(tmp, self.folder)
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, self.folder)

    def load(self, torch: Any, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any] | None:
        if not (self.folder / "progress.json").is_file():
            return None
        from peft import set_peft_model_state_dict

        saved = torch.load(self.folder / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state: dict[str, Any] = json.loads((self.folder / "progress.json").read_text())
        return state


def _lower_priority(nice: int, threads: int | None, torch: Any) -> int:
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    from edge_models.runtime import default_threads

    count = threads or default_threads()
    torch.set_num_threads(count)
    return count


def _schedule(torch: Any, optimizer: Any, total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _new_model(torch: Any, options: TrainOptions) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(options.seed)
    base = AutoModelForCausalLM.from_pretrained(options.base_hf, dtype=torch.float32)
    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.train()
    return model


def _optimizer(torch: Any, model: Any, options: TrainOptions) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=0.0)


def _step(
    torch: Any,
    model: Any,
    optimizer: Any,
    batch: tuple[Any, Any, Any],
    bf16: bool,
    anchor: tuple[Anchor, float, int] | None,
) -> float:
    """One optimiser step; the returned loss is the task's alone (the anchor's is a regulariser)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = _loss(torch, model, *batch)
        total = loss
        if anchor is not None:
            regulariser, weight, step = anchor
            total = loss + weight * regulariser.loss(model, step)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


def _probe(
    torch: Any, options: TrainOptions, batches: list[tuple[Any, Any, Any]], anchor: Anchor | None
) -> tuple[str, dict[str, Any]]:
    """fp32 against bf16 autocast: the same first steps from the same start; the faster wins if its loss agrees.

    Timing skips each run's first step (allocation, kernel selection).
    """
    results: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        model = _new_model(torch, options)
        optimizer = _optimizer(torch, model, options)
        times, losses = [], []
        for index, batch in enumerate(batches):
            started = time.perf_counter()
            regulariser = (anchor, options.anchor_weight, index) if anchor else None
            losses.append(_step(torch, model, optimizer, batch, precision == "bf16", regulariser))
            times.append(time.perf_counter() - started)
        steady = sorted(times[1:]) or times
        results[precision] = {
            "median_step_s": round(steady[len(steady) // 2], 3),
            "losses": [round(x, 4) for x in losses],
        }
        del model, optimizer
    fp32, bf16 = results["fp32"], results["bf16"]
    # Quality holds when bf16's mean loss over the probe is within 3% of fp32's on the same batches.
    tail = max(1, len(batches) // 2)
    drift = abs(sum(bf16["losses"][-tail:]) - sum(fp32["losses"][-tail:])) / max(1e-6, sum(fp32["losses"][-tail:]))
    faster = bf16["median_step_s"] < fp32["median_step_s"]
    chosen = "bf16" if faster and drift <= 0.03 else "fp32"
    results.update(loss_drift=round(drift, 4), chosen=chosen, steps_each=len(batches))
    return chosen, results


def train(options: TrainOptions, *, base_onnx: Path | None = None, log: Any = print) -> TrainResult:
    started = time.perf_counter()
    torch = _torch()
    threads = _lower_priority(options.nice, options.threads, torch)
    from transformers import AutoTokenizer

    report = ReadReport()
    rows, holdout_count, aliases = load_training_rows(options, report)
    if report.skipped:
        log(f"skipped {report.skipped} invalid lines: {'; '.join(report.reasons)}")
    if not rows:
        raise EdgeModelError(f"no trainable rows in {', '.join(map(str, options.data))} (holdout: {holdout_count})")
    tokenizer = AutoTokenizer.from_pretrained(options.base_hf)
    cache = Path(options.replay_cache) if options.replay_cache else options.work / "replay.jsonl"
    # The base model's answers to general prompts: replay rows, and part of the anchor's text.
    general = replay_rows(base_onnx, cache) if options.replay_share > 0 or options.anchor_weight > 0 else []
    replay = general if options.replay_share > 0 else []
    examples = [e for row in rows if (e := tokenize(tokenizer, row["messages"], options.max_tokens))]
    replay_examples = [e for row in replay if (e := tokenize(tokenizer, row["messages"], options.max_tokens))]
    if not examples:
        raise EdgeModelError(f"every row is longer than {options.max_tokens} tokens or has no assistant answer")
    # Replay rows are mixed in at ``replay_share`` of the data, repeated as needed.
    wanted = int(len(examples) * options.replay_share / max(1e-9, 1 - options.replay_share))
    mixed = (
        examples + [replay_examples[i % len(replay_examples)] for i in range(wanted)] if replay_examples else examples
    )
    tasks = sorted({str(t) for row in rows if (t := (row.get("metadata") or {}).get("task"))})
    planned = max(1, math.ceil(len(mixed) * options.epochs / options.batch_size))
    log(
        f"{len(examples)} rows ({holdout_count} held out, {len(aliases)} fixed system prompts aliased), "
        f"{len(mixed) - len(examples)} replay rows, {planned} steps of {options.batch_size}, {threads} threads"
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = list(_batches(mixed, options.batch_size, options.seed, planned))
    anchor = None
    if options.anchor_weight > 0:
        anchor_cache = cache.with_name(cache.stem.replace("-replay", "") + "-anchor.jsonl")
        anchor = _make_anchor(torch, options, tokenizer, anchor_rows(base_onnx, anchor_cache, general), pad)
        if anchor is not None:
            fitted = time.perf_counter()
            anchor.fit(_new_model(torch, options))
            took = time.perf_counter() - fitted
            log(f"anchor: {len(anchor.sequences)} general sequences, base top-{anchor.top_k} targets ({took:.0f}s), "
                f"{anchor.batch} a step, weight {options.anchor_weight}")  # fmt: skip

    def batch_at(step: int) -> tuple[Any, Any, Any]:
        return _collate(torch, [mixed[i] for i in order[step]], pad)

    checkpoint = _Checkpoint(options.work / "checkpoint")
    state_file = options.work / "train-state.json"
    resumed = json.loads(state_file.read_text()) if options.resume and state_file.is_file() else None
    if resumed is not None:
        precision, probe, total = resumed["precision"], resumed["probe"], resumed["total_steps"]
    elif options.precision == "auto":
        probe_steps = min(options.probe_steps, planned)
        log(f"timing fp32 against bf16 autocast on {probe_steps} steps each")
        precision, probe = _probe(torch, options, [batch_at(i) for i in range(probe_steps)], anchor)
        log(f"  fp32 {probe['fp32']['median_step_s']}s/step, bf16 {probe['bf16']['median_step_s']}s/step, "
            f"loss drift {probe['loss_drift']:.1%}: {precision}")  # fmt: skip
        total = planned
    else:
        precision, probe, total = options.precision, {}, planned
    bf16 = precision == "bf16"
    if resumed is None:
        # Fit the schedule to the budget so the learning rate has decayed when time is up.
        per_step = probe.get(precision, {}).get("median_step_s")
        spent = time.perf_counter() - started
        if per_step:
            affordable = int((options.time_budget_s - spent) / (per_step * 1.1))
            if affordable < total:
                log(f"the time budget affords {affordable} of {total} steps: the schedule is fitted to it")
                total = max(1, affordable)
        options.work.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"precision": precision, "probe": probe, "total_steps": total}))

    model = _new_model(torch, options)
    optimizer = _optimizer(torch, model, options)
    scheduler = _schedule(torch, optimizer, total, max(1, int(total * options.warmup_share)))
    done = 0
    if resumed is not None and (saved := checkpoint.load(torch, model, optimizer, scheduler)) is not None:
        done = int(saved["step"])
        log(f"resumed at step {done} of {total}")
    bar = _progress_bar(total, done, options.progress)
    last_save = time.perf_counter()
    recent: list[float] = []
    stopped = False
    deadline = started + options.time_budget_s
    for step in range(done, total):
        if time.perf_counter() > deadline:
            stopped = True
            log(f"time budget reached at step {step} of {total}")
            break
        regulariser = (anchor, options.anchor_weight, step) if anchor else None
        recent.append(_step(torch, model, optimizer, batch_at(step), bf16, regulariser))
        scheduler.step()
        recent = recent[-20:]
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
        for rows_seen in options.snapshot_rows:
            if (done - 1) * options.batch_size < rows_seen <= done * options.batch_size:
                _save_snapshot(torch, model, options.work / "snapshots" / f"rows-{rows_seen}.pt")
        if time.perf_counter() - last_save > options.checkpoint_every_s:
            checkpoint.save(torch, model, optimizer, scheduler, {"step": done})
            last_save = time.perf_counter()
    bar.close()
    checkpoint.save(torch, model, optimizer, scheduler, {"step": done})

    merged_dir = options.work / "merged"
    merged = model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return TrainResult(
        merged=merged_dir,
        train_rows=len(examples),
        holdout_rows=holdout_count,
        replay_rows=len(mixed) - len(examples),
        steps=done,
        planned_steps=planned,
        precision=precision,
        probe=probe,
        seconds=round(time.perf_counter() - started, 1),
        final_loss=round(sum(recent) / len(recent), 4) if recent else float("nan"),
        prompt_aliases=aliases,
        tasks=tasks,
        data_sha256=data_digest(rows),
        stopped_by_budget=stopped,
    )


def _save_snapshot(torch: Any, model: Any, path: Path) -> None:
    from peft import get_peft_model_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(get_peft_model_state_dict(model), path)


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, done: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", file=sys.stderr, dynamic_ncols=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--base-hf", type=Path, required=True)
    parser.add_argument("--base-onnx", type=Path, help="the served base model, for replay answers")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True, help="where to write the result JSON")
    parser.add_argument("--options", type=json.loads, default={}, help="TrainOptions fields as JSON")
    args = parser.parse_args(argv)
    options = TrainOptions(data=args.data, base_hf=args.base_hf, work=args.work, **args.options)
    try:
        result = train(options, base_onnx=args.base_onnx, log=lambda line: print(line, flush=True))
    except MissingDependency as exc:
        print(exc, file=sys.stderr)
        return 3
    except EdgeModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    args.result.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
