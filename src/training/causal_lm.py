"""Instruction-tune a causal language model on CPU (LoRA, QLoRA or full) and report what changed.

    python -m src.training.train_model --task causal-lm [--model M] [--data D] [--method lora|qlora|full] [...]

The recipe, top to bottom: setup (threads, precision, examples, base model — a GGUF is imported once —, tokenizer,
tokenize once with response-only labels, adapters) -> evaluate before (held-out loss and perplexity, fixed prompts
generated) -> train (Trainer: micro-batches with gradient accumulation, warmup + schedule, length-grouped batches
with dynamic padding, checkpoints with --checkpoint_every N, --resume) -> evaluate after -> save (the adapter on its
own, optionally merged; or the full model) -> report (summary table, metrics.json, training-curves plot).

Console: a few log lines (--log_level), one progress bar per phase (evaluate before, generate before, train with
tokens/s, evaluate after, generate after; with --disable_tqdm the training loss as log lines instead), then the
summary table on stdout. The full log goes to <output_dir>/train.log.

Exit codes: 0 success, 2 bad input (one line on stderr), 3 the --expect_max_perplexity_ratio gate failed.
"""

import logging
import math
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import bitsandbytes as bnb
import numpy as np
import peft
import torch
import transformers
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from src.common import distributed
from src.common.checkpoints import ResumableTrainer, latest_complete_checkpoint
from src.common.allocator import allocator_in_use
from src.common.cpu import autocast, configure_threads, peak_rss_mib
from src.common.data import LENGTH_COLUMN
from src.common.errors import run_cli
from src.common.instruction_data import (
    ALPACA_PROMPT,
    CausalLMCollator,
    has_chat_template,
    load_instruction_data,
    tokenize_records,
)
from src.common.logging_utils import (
    RunLog,
    main_process_run_log,
    progress_bar,
    setup_logging,
    stray_progress_bars_hidden,
)
from src.common.models import load_causal_lm, load_tokenizer, local_model_dir, resolve_model_source
from src.common.paths import atomic_dir, atomic_write_json
from src.common.plots import plot_training_curves
from src.common.training_logs import report_progress
from src.training.causal_lm_config import CausalLMConfig, build_causal_lm_parser
from src.training.config import parse_config

logger = logging.getLogger(__name__)

EXIT_QUALITY_GATE = 3
ADAPTER_SUBDIR = "adapter"  # <output_dir>/adapter: the LoRA weights + tokenizer (PeftModel.from_pretrained-loadable)
MERGED_SUBDIR = "merged"  # <output_dir>/merged: base + adapter as one model (--merge_adapter)
MODEL_SUBDIR = "model"  # <output_dir>/model: the fully fine-tuned model (--method full)
JOB_FILE = "cpu_finetune_job.json"  # in each saved folder: the base model spec and settings, read by generate
METRICS_FILE = "metrics.json"
PLOT_FILE = "training_curves.png"


@dataclass
class HeldOutLoss:
    loss: float  # mean cross-entropy per trained (response) token, nats
    perplexity: float  # exp(loss)
    tokens: int  # trained tokens scored
    seconds: float


@torch.inference_mode()
def held_out_loss(
    model: PreTrainedModel, dataset: Dataset, collator, batch_size: int, precision: str, progress: str | None = None
) -> HeldOutLoss:
    """Token-weighted mean loss over the held-out set, in length-sorted batches (least padding).

    progress: the name of a progress bar to show (examples/s, ETA); None: none.
    """
    start = perf_counter()
    order = np.argsort(np.asarray(dataset[LENGTH_COLUMN]), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    total, tokens = 0.0, 0
    model.eval()
    with autocast(precision), progress_bar(progress, len(dataset), "examples") as bar:
        for batch in DataLoader(dataset, batch_sampler=batches, collate_fn=collator):
            bar.update(len(batch["labels"]))
            n = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
            if n == 0:
                continue
            output = model(**batch)
            total += output.loss.float().item() * n
            tokens += n
    loss = total / max(tokens, 1)
    return HeldOutLoss(loss, math.exp(min(loss, 50.0)), tokens, perf_counter() - start)  # exp capped: no overflow


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """A user prompt as the model sees it at inference: the chat template's generation prompt, else alpaca's."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return ALPACA_PROMPT.format(instruction=prompt)


@torch.inference_mode()
def generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int,
    precision: str, progress: str | None = None,
) -> list[dict[str, str]]:
    """Greedy completions of each prompt (deterministic, so before/after and save/load compare exactly).

    progress: the name of a progress bar to show (prompts done, ETA); None: none.
    """
    model.eval()
    results = []
    with progress_bar(progress, len(prompts), "prompts") as bar:
        for prompt in prompts:
            text = prompt_text(tokenizer, prompt)
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not has_chat_template(tokenizer))
            with autocast(precision):
                output = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            results.append({"prompt": prompt, "completion": completion.strip()})
            bar.update(1)
    return results


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Causal LMs often have no pad token; padding positions are masked, so end-of-sequence (or unk) serves."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token


def prepare_model(config: CausalLMConfig, source: str, precision: str) -> tuple[PreTrainedModel, dict[str, int]]:
    """The base model with adapters (lora, qlora) or all weights trainable (full); and parameter counts.

    LoRA in bf16 keeps the frozen base in bf16: half its memory, and no fp32 -> bf16 weight casts in every forward
    under autocast (1.3x faster here). The adapters, the only weights the optimizer updates, stay fp32 (peft
    upcasts them), as do all weights of full fine-tuning. LoRA's dropout defaults to 0 for the same reason: its
    random masks cost ~20% of a bf16 LoRA step on CPU.
    """
    quantization = "nf4" if config.method == "qlora" else None
    base_dtype = torch.bfloat16 if config.method == "lora" and precision == "bf16" else torch.float32
    model = load_causal_lm(source, quantization=quantization, dtype=base_dtype)
    model.config.use_cache = False  # the KV cache only helps generation, and costs memory in training
    if config.method == "qlora":
        # Casts norms and embeddings to fp32 and freezes the quantized base; checkpointing stays our choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place for a faster kernel the first time
        # it runs without gradients (our held-out evaluation), and asserts on layers whose output width is not a
        # multiple of its block (stories260K's). Training never uses that kernel: keep the weights as quantized.
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    if config.method in ("lora", "qlora"):
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if base_dtype == torch.bfloat16:
            # The job runs every forward under bf16 autocast, which casts a LoRA input to bf16 for its matmul
            # anyway: peft's own cast of it to the adapters' fp32 first is only a copy each way per adapter (~8% of
            # a step here; bench_causal_lm). Results are identical; forwards must then run under autocast.
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, {"trainable": trainable, "total": total}


def job_record(config: CausalLMConfig, source: str) -> dict[str, Any]:
    """What a saved folder was trained from: generate uses it to find the base model of an adapter."""
    return {"base_model": config.model, "base_model_source": source, "method": config.method,
            "config": config.fingerprint()}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_outputs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: CausalLMConfig, source: str
) -> dict[str, str | None]:
    """Save atomically: the adapter alone (lora, qlora), the merged model (--merge_adapter), or the full model."""
    output_dir = Path(config.output_dir)
    record = job_record(config, source)
    saved: dict[str, str | None] = {"adapter": None, "merged": None, "model": None}
    if config.method == "full":
        with atomic_dir(output_dir / MODEL_SUBDIR) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            atomic_write_json(staging / JOB_FILE, record)
        saved["model"] = str(output_dir / MODEL_SUBDIR)
        return saved
    with atomic_dir(output_dir / ADAPTER_SUBDIR) as staging:
        model.save_pretrained(staging)  # a PeftModel saves only its adapter weights and adapter_config.json
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / JOB_FILE, record)
    saved["adapter"] = str(output_dir / ADAPTER_SUBDIR)
    if config.merge_adapter:
        merged = model.merge_and_unload()  # last: it folds the adapter into the base weights in place
        with atomic_dir(output_dir / MERGED_SUBDIR) as staging:
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            atomic_write_json(staging / JOB_FILE, record | {"merged": True})
        saved["merged"] = str(output_dir / MERGED_SUBDIR)
    return saved


def run(config: CausalLMConfig, run_log: RunLog | None = None) -> dict[str, Any]:
    """Fine-tune as configured; writes <output_dir>/metrics.json (and the adapter or model) and returns the report.

    run_log: opened once the data and model have loaded (bad input then leaves the output folder untouched).
    """
    started = perf_counter()
    output_dir = Path(config.output_dir)
    precision = config.resolved_precision

    # --- 1. Setup ---
    threads = configure_threads()
    world = distributed.join_world(config.data_parallel_world_size, config.ddp_timeout) if distributed.in_rank() else None
    config.check_world(world.size if world else 1)
    if world:
        logger.info("distributed: %s", world.describe())
    # Data first: a malformed record fails before the (slow) model load.
    train_records, eval_records = load_instruction_data(
        config.data, config.eval_fraction, config.seed, config.max_train_samples, config.max_eval_samples
    )
    with stray_progress_bars_hidden():  # the GGUF import's de-quantizing bar
        source = local_model_dir(resolve_model_source(config.model))  # a GGUF is imported once, then found by hash
    logger.info("model %s (%s), data %s, %s, %s, %d threads", config.model, source, config.data, config.method,
                precision, threads)
    tokenizer = load_tokenizer(source)
    ensure_pad_token(tokenizer)
    train_set = tokenize_records(train_records, tokenizer, config.max_length, config.train_on_prompt)
    eval_set = tokenize_records(eval_records, tokenizer, config.max_length, config.train_on_prompt)
    collator = CausalLMCollator(tokenizer.pad_token_id)
    set_seed(config.seed)  # LoRA's A matrices are randomly initialised
    model, parameters = prepare_model(config, source, precision)
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info("%d of %d parameters trainable (%.2f%%)", parameters["trainable"], parameters["total"],
                100 * parameters["trainable"] / parameters["total"])
    log_path = run_log.open() if run_log else None
    setup_seconds = perf_counter() - started

    # --- 2. Evaluate before ---
    eval_batch = config.per_device_eval_batch_size
    before = held_out_loss(model, eval_set, collator, eval_batch, precision, config.progress("evaluate before"))
    logger.info("before: held-out loss %.4f, perplexity %.2f", before.loss, before.perplexity)
    generations_before = generate(
        model, tokenizer, config.prompts, config.max_new_tokens, precision, config.progress("generate before")
    )

    # --- 3. Train ---
    trainer = ResumableTrainer(
        model=model,
        args=config.trainer_arguments(),
        data_collator=collator,
        train_dataset=train_set,
        processing_class=tokenizer,
    )
    report_progress(trainer)  # the training bar (tokens/s), the loss as log lines
    train_start = perf_counter()
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    train_seconds = perf_counter() - train_start
    parameters_digest = distributed.check_parameters_identical(model)
    epochs_run = trainer.state.epoch or 0.0
    tokens_trained = int(sum(train_set[LENGTH_COLUMN]) * epochs_run)  # padding excluded

    # --- 4. Evaluate after ---
    after = held_out_loss(model, eval_set, collator, eval_batch, precision, config.progress("evaluate after"))
    logger.info("after: held-out loss %.4f, perplexity %.2f", after.loss, after.perplexity)
    generations_after = generate(
        model, tokenizer, config.prompts, config.max_new_tokens, precision, config.progress("generate after")
    )

    # --- 5. Save (rank 0 only) ---
    if not distributed.is_main_process():
        return {}
    save_start = perf_counter()
    saved = save_outputs(model, tokenizer, config, source)
    save_seconds = perf_counter() - save_start
    train_loss = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    plot_path = plot_training_curves(
        output_dir / PLOT_FILE,
        train_loss=train_loss,
        eval_metric=[(0, before.loss), (trainer.state.global_step, after.loss)],
        title=f"{config.method} {Path(config.model).name} on {Path(config.data).name}",
        eval_label="held-out loss",
    )
    latest_checkpoint = latest_complete_checkpoint(config.checkpoint_dir) if config.saves_checkpoints else None

    # --- 6. Report ---
    report = {
        "task": "causal-lm",
        "model": config.model,
        "model_source": source,
        "data": config.data,
        "method": config.method,
        "examples": {"train": len(train_set), "held_out": len(eval_set)},
        "precision": precision,
        "threads": threads,
        "allocator": allocator_in_use(),
        "distributed": distributed.run_report(world, parameters_digest),
        "parameters": parameters,
        "before": asdict(before),
        "after": asdict(after),
        "perplexity_ratio": after.perplexity / before.perplexity,
        "generations": [
            {"prompt": b["prompt"], "before": b["completion"], "after": a["completion"]}
            for b, a in zip(generations_before, generations_after, strict=True)
        ],
        "train": {
            "steps": trainer.state.global_step,
            "epochs": epochs_run,
            "seconds": train_seconds,
            "tokens": tokens_trained,
            "tokens_per_second": tokens_trained / train_seconds if train_seconds else None,
            "examples_per_second": train_output.metrics["train_samples_per_second"],
            "mean_loss": train_output.training_loss,
            "resumed_from": config.resume_from_checkpoint,
            "log_history": trainer.state.log_history,
        },
        "timings": {"setup_s": setup_seconds, "eval_before_s": before.seconds, "train_s": train_seconds,
                    "eval_after_s": after.seconds, "save_s": save_seconds, "total_s": perf_counter() - started},
        "peak_rss_mib": peak_rss_mib(),
        "saved": saved,
        "adapter_bytes": folder_bytes(Path(saved["adapter"])) if saved["adapter"] else None,
        "latest_checkpoint": str(latest_checkpoint.path) if latest_checkpoint else None,
        "plot": str(plot_path),
        "log_file": str(log_path) if log_path else None,
        "config": config.fingerprint(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
    }
    metrics_path = atomic_write_json(output_dir / METRICS_FILE, report)
    logger.info("wrote %s", metrics_path)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The final summary table printed to stdout."""
    before, after, train, parameters = report["before"], report["after"], report["train"], report["parameters"]
    saved, examples = report["saved"], report["examples"]
    lines = [
        f"model       {report['model']}",
        f"data        {report['data']} ({examples['train']} train / {examples['held_out']} held out)",
        f"method      {report['method']}, {report['precision']}, {report['threads']} threads, "
        f"{report['allocator']} malloc; {parameters['trainable']:,} of {parameters['total']:,} parameters trained",
        *([f"distributed {distributed.describe_report(report['distributed'])}"]
          if report["distributed"]["world_size"] > 1 else []),
        "",
        f"{'held out':<12}  {'before':>9}  {'after':>9}",
        f"{'loss':<12}  {before['loss']:>9.4f}  {after['loss']:>9.4f}",
        f"{'perplexity':<12}  {before['perplexity']:>9.3f}  {after['perplexity']:>9.3f}  "
        f"(after/before {report['perplexity_ratio']:.3f})",
        "",
    ]
    for item in report["generations"]:
        lines += [f"prompt      {item['prompt']!r}"]
        lines += [f"  before    {item['before']!r}", f"  after     {item['after']!r}"]
    lines += [
        "",
        f"train       {train['steps']} steps, {train['epochs']:.2f} epochs in {train['seconds']:.1f} s "
        f"({train['tokens_per_second']:.1f} tokens/s, {train['examples_per_second']:.2f} examples/s)",
        f"total       {report['timings']['total_s']:.1f} s wall, peak RSS {report['peak_rss_mib']:.0f} MiB",
    ]
    if saved["adapter"]:
        lines.append(f"adapter     {saved['adapter']} ({report['adapter_bytes'] / 2**20:.1f} MiB)")
    if saved["merged"]:
        lines.append(f"merged      {saved['merged']}")
    if saved["model"]:
        lines.append(f"model dir   {saved['model']}")
    lines.append(f"plot        {report['plot']}")
    if report.get("log_file"):
        lines.append(f"log         {report['log_file']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()  # before the flags are read: bad input is reported as one line
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(argv, parser=build_causal_lm_parser())
    setup_logging(config.console_log_level)
    command = shlex.join(["train_model", "--task", "causal-lm", *argv])
    with main_process_run_log(config.log_file, command, config.console_log_level) as run_log:
        report = run(config, run_log)
    if not distributed.is_main_process():
        return 0
    print(format_report(report))
    gate = config.expect_max_perplexity_ratio
    if gate is not None and report["perplexity_ratio"] > gate:
        print(
            f"error: held-out perplexity after/before is {report['perplexity_ratio']:.3f}, above "
            f"--expect_max_perplexity_ratio {gate}",
            file=sys.stderr,
        )
        return EXIT_QUALITY_GATE
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
