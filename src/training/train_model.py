"""Fine-tune a sequence classifier on CPU and report its quality before and after.

    python -m src.training.train_model [--model M] [--data D] [--config FILE] [any TrainingArguments flag]
    python -m src.training.train_model --task causal-lm [...]   (instruction tuning: src/training/causal_lm.py)

The recipe, top to bottom: setup (threads, precision, tokenizer, model, data, tokenize once) -> evaluate
before -> train (Trainer, dynamic padding, length-grouped batches; checkpoints with --checkpoint_every N, continued
with --resume) -> evaluate after -> save -> report (summary table, metrics.json, eval_history.json, a plot).

Console: a few log lines (--log_level), one progress bar per phase (evaluate before, train, evaluate after; without
them, with --disable_tqdm, the training loss as log lines), then the summary table on stdout. The full log, library
records and per-step losses included, goes to <output_dir>/train.log.

Distributed: --nproc_per_node N (and --nnodes, --node_rank, --master_addr on several machines) trains data-parallel
with PyTorch's torchrun and gloo (src/common/distributed.py): the same global batch, so the same model, on any
number of processes; rank 0 alone writes the outputs and prints the summary.

Exit codes: 0 success, 2 bad input (one line on stderr), 3 the --expect_min_accuracy quality gate failed, 1 a process
of a distributed job died, 4 a process lost the others.
"""

from src.common.allocator import allocator_in_use, restart_with_fast_allocator

if __name__ == "__main__":  # before the heavy imports below: the process it replaces should not pay for them
    restart_with_fast_allocator()

import logging
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from torch.utils.data import DataLoader
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from src.common import distributed
from src.common.checkpoints import ResumableTrainer, checkpoint_step, latest_complete_checkpoint
from src.common.cpu import (
    autocast,
    configure_threads,
    peak_rss_mib,
)
from src.common.data import (
    ID2LABEL,
    LABEL2ID,
    LABEL_COLUMN,
    LABEL_NAMES,
    LENGTH_COLUMN,
    PaddingCollator,
    load_data,
    tokenize,
)
from src.common.errors import CliArgumentParser, run_cli
from src.common.logging_utils import (
    RunLog,
    held_load_reports,
    load_report_rows,
    main_process_run_log,
    pass_on,
    progress_bar,
    setup_logging,
)
from src.common.metrics import classification_metrics, format_confusion_matrix
from src.common.models import load_sequence_classifier, load_tokenizer, resolve_model_source
from src.common.paths import atomic_dir, atomic_write_json
from src.common.plots import plot_training_curves
from src.common.training_logs import EvalHistory, EvalHistoryCallback, report_progress
from src.training import causal_lm
from src.training.config import FinetuneConfig, parse_config

logger = logging.getLogger(__name__)

EXIT_QUALITY_GATE = 3
MODEL_SUBDIR = "model"  # <output_dir>/model: fine-tuned weights + tokenizer, loadable with from_pretrained
METRICS_FILE = "metrics.json"  # <output_dir>/metrics.json: everything the summary table shows, and more
EVAL_HISTORY_FILE = "eval_history.json"  # <output_dir>/eval_history.json: every evaluation, with step and epoch
PLOT_FILE = "training_curves.png"  # <output_dir>/training_curves.png: training loss and validation accuracy
METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # accuracy, precision, recall, f1, confusion_matrix (see common.metrics)
    loss: float  # mean cross-entropy per example
    seconds: float
    examples: int


@torch.inference_mode()
def evaluate(
    model: PreTrainedModel,
    dataset: datasets.Dataset,
    collator: PaddingCollator,
    batch_size: int,
    precision: str,
    progress: str | None = None,
) -> Evaluation:
    """Classify a tokenized split in length-sorted batches (least padding) and score the predictions.

    progress: the name of a progress bar to show (examples/s, ETA); None: none.
    """
    start = perf_counter()
    order = np.argsort(np.asarray(dataset[LENGTH_COLUMN]), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collator)
    preds = np.empty(len(dataset), dtype=np.int64)
    total_loss = 0.0
    model.eval()
    with autocast(precision), progress_bar(progress, len(dataset), "examples") as bar:
        for indices, batch in zip(batches, loader, strict=True):
            output = model(**batch)
            preds[indices] = output.logits.argmax(dim=-1).numpy()
            total_loss += output.loss.float().item() * len(indices)
            bar.update(len(indices))
    metrics = classification_metrics(preds, np.asarray(dataset[LABEL_COLUMN]), num_labels=len(LABEL_NAMES))
    return Evaluation(metrics, total_loss / len(dataset), perf_counter() - start, len(dataset))


@torch.inference_mode()
def predict(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, precision: str, max_length: int
) -> dict[str, Any]:
    """The predicted label name of one text, with its probability."""
    model.eval()
    inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    with autocast(precision):
        logits = model(**inputs).logits
    probs = logits.float().softmax(dim=-1)[0]
    label_id = int(probs.argmax())
    return {"text": text, "label": model.config.id2label[label_id], "probability": float(probs[label_id])}


def trainer_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Scalar metrics for the Trainer's per-epoch evaluation logs."""
    metrics = classification_metrics(eval_pred.predictions.argmax(axis=-1), eval_pred.label_ids, len(LABEL_NAMES))
    return {name: metrics[name] for name in METRIC_NAMES}


def classification_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy summed over the micro-batch and divided by the examples of the whole optimizer step (all
    micro-batches, all processes: the Trainer's num_items_in_batch), so a step's loss is the mean over its global
    batch however it is split: 1 process x 64, 2 x 32, or micro-batches of unequal size."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    total = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def history_metrics(evaluation: Evaluation) -> dict[str, float]:
    """One of our evaluations under the names the Trainer's have in eval_history.json."""
    scores = {name: evaluation.metrics[name] for name in METRIC_NAMES}
    return {"loss": evaluation.loss, **scores, "runtime": evaluation.seconds}


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> Path:
    """Save model + tokenizer atomically: a previous model at `path` is replaced only once the new one is complete."""
    with atomic_dir(path) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return path


def load_classifier(config: FinetuneConfig, source: str) -> PreTrainedModel:
    """The classifier as the job trains it: its new head seeded by --seed, with --dropout and --attn_implementation."""
    set_seed(config.seed)  # before the model load: the new classifier head is randomly initialised
    with held_load_reports() as reports:
        model = load_sequence_classifier(
            source,
            num_labels=len(LABEL_NAMES),
            id2label=ID2LABEL,
            label2id=LABEL2ID,
            dropout=config.dropout,
            attn_implementation=config.attn_implementation,
        )
    for report in reports:
        explain_new_head(model, report)
    return model


def explain_new_head(model: PreTrainedModel, report: logging.LogRecord) -> None:
    """transformers' LOAD REPORT of a base model loaded under a new classification head, as one INFO line (the
    table goes to the log file); a report of anything else (weights of the base model missing, unexpected or
    mismatched) is passed on as the warning it is."""
    prefix = f"{model.base_model_prefix}."
    head = [key for key in model.state_dict() if model.base_model_prefix and not key.startswith(prefix)]
    rows = load_report_rows(report)
    if not (rows and all(status == "MISSING" and key in head for key, status in rows)):
        pass_on(report)
        return
    new = [key for key in head if (key, "MISSING") in rows]
    logger.info("new classification head (%s): initialised randomly, trained by this job", ", ".join(new))
    pass_on(report, file_only=True)


def run(config: FinetuneConfig, run_log: RunLog | None = None) -> dict[str, Any]:
    """Fine-tune as configured; writes <output_dir>/metrics.json (and model/) and returns the same report.

    run_log: opened once the data and model have loaded (bad input then leaves the output folder untouched).
    """
    started = perf_counter()
    output_dir = Path(config.output_dir)
    precision = config.resolved_precision

    # --- 1. Setup ---
    source = resolve_model_source(config.model)
    threads = configure_threads()
    world = distributed.join_world(config.data_parallel_world_size, config.ddp_timeout) if distributed.in_rank() else None
    config.check_world(world.size if world else 1)
    if world:
        logger.info("distributed: %s", world.describe())
    main_process = distributed.is_main_process()  # the only one that writes outputs
    # Data first: a source that is missing (e.g. a Hub dataset offline) fails before any model is loaded.
    raw = load_data(
        config.data,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        train_fraction=config.train_fraction,
        seed=config.seed,
    )
    logger.info("model %s (%s), data %s, %s, %d threads", config.model, source, config.data, precision, threads)
    tokenizer = load_tokenizer(source)
    model = load_classifier(config, source)
    encoded = tokenize(raw, tokenizer, config.max_length)
    train_set, eval_set = encoded["train"], encoded["validation"]
    collator = PaddingCollator(tokenizer)
    log_path = run_log.open() if run_log else None
    setup_seconds = perf_counter() - started

    # --- 2. Evaluate before ---
    eval_batch = config.per_device_eval_batch_size
    before = evaluate(model, eval_set, collator, eval_batch, precision, config.progress("evaluate before"))
    logger.info("before fine-tuning: accuracy %.4f, f1 %.4f", before.metrics["accuracy"], before.metrics["f1"])
    history = EvalHistory(output_dir / EVAL_HISTORY_FILE, write=main_process)  # rewritten after each evaluation
    resumed_step = 0
    if config.resume_from_checkpoint:  # keep what the interrupted run evaluated up to its checkpoint
        resumed_step = checkpoint_step(config.resume_from_checkpoint)
        history.restore(up_to_step=resumed_step)
        logger.info("resuming from %s", config.resume_from_checkpoint)
    history.add("before", step=0, epoch=0.0, metrics=history_metrics(before))

    # --- 3. Train (from the checkpoint --resume found: model, optimizer, scheduler, RNG states, data position) ---
    trainer = ResumableTrainer(
        model=model,
        args=config.trainer_arguments(),
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        compute_metrics=trainer_metrics,
        compute_loss_func=classification_loss,
        callbacks=[EvalHistoryCallback(history)],
    )
    report_progress(trainer)  # the training bar, the loss as log lines
    train_start = perf_counter()
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    train_seconds = perf_counter() - train_start
    steps_this_run = trainer.state.global_step - resumed_step
    parameters_digest = distributed.check_parameters_identical(model)

    # --- 4. Evaluate after ---
    after = evaluate(model, eval_set, collator, eval_batch, precision, config.progress("evaluate after"))
    logger.info("after fine-tuning: accuracy %.4f, f1 %.4f", after.metrics["accuracy"], after.metrics["f1"])
    history.add("after", step=trainer.state.global_step, epoch=trainer.state.epoch, metrics=history_metrics(after))
    sample = predict(model, tokenizer, config.sample_text, precision, config.max_length)

    # --- 5. Save (rank 0 only) ---
    if not main_process:
        return {}
    save_start = perf_counter()
    model_dir = save_model(model, tokenizer, output_dir / MODEL_SUBDIR) if config.save_model else None
    save_seconds = perf_counter() - save_start
    train_loss = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    plot_path = plot_training_curves(
        output_dir / PLOT_FILE,
        train_loss=train_loss,
        eval_metric=history.points("accuracy"),
        title=f"{Path(config.model).name} on {Path(config.data).name}",
    )
    latest_checkpoint = latest_complete_checkpoint(config.checkpoint_dir) if config.saves_checkpoints else None

    # --- 6. Report ---
    report = {
        "model": config.model,
        "model_source": source,
        "data": config.data,
        "examples": {"train": len(train_set), "validation": len(eval_set)},
        "precision": precision,
        "threads": threads,
        "allocator": allocator_in_use(),
        "distributed": distributed.run_report(world, parameters_digest),
        "before": asdict(before),
        "after": asdict(after),
        "sample_prediction": sample,
        "train": {
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "seconds": train_seconds,
            "resumed_from": config.resume_from_checkpoint,
            "steps_this_run": steps_this_run,
            "examples_per_second": train_output.metrics["train_samples_per_second"],  # in this run
            "mean_loss": train_output.training_loss,
            "log_history": trainer.state.log_history,
        },
        "timings": {
            "setup_s": setup_seconds,
            "eval_before_s": before.seconds,
            "train_s": train_seconds,
            "eval_after_s": after.seconds,
            "save_s": save_seconds,
            "total_s": perf_counter() - started,
        },
        "peak_rss_mib": peak_rss_mib(),
        "model_dir": str(model_dir) if model_dir else None,
        "latest_checkpoint": str(latest_checkpoint.path) if latest_checkpoint else None,
        "eval_history": str(history.path),
        "plot": str(plot_path),
        "log_file": str(log_path) if log_path else None,
        "config": config.fingerprint()
        | {"max_eval_samples": config.max_eval_samples, "eval_batch_size": config.per_device_eval_batch_size},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
        },
    }
    metrics_path = atomic_write_json(output_dir / METRICS_FILE, report)
    logger.info("wrote %s", metrics_path)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The final summary table printed to stdout."""
    before, after, train, timings = report["before"], report["after"], report["train"], report["timings"]
    sample, examples = report["sample_prediction"], report["examples"]
    lines = [
        f"model      {report['model']}",
        f"data       {report['data']} ({examples['train']} train / {examples['validation']} validation)",
        f"precision  {report['precision']}, {report['threads']} threads, {report['allocator']} malloc",
        *([f"distrib.   {distributed.describe_report(report['distributed'])}"]
          if report["distributed"]["world_size"] > 1 else []),
        "",
        f"{'metric':<10}  {'before':>7}  {'after':>7}",
        *(f"{name:<10}  {before['metrics'][name]:>7.4f}  {after['metrics'][name]:>7.4f}" for name in METRIC_NAMES),
        f"{'loss':<10}  {before['loss']:>7.4f}  {after['loss']:>7.4f}",
        "",
        "confusion matrix before:",
        format_confusion_matrix(before["metrics"]["confusion_matrix"], LABEL_NAMES),
        "confusion matrix after:",
        format_confusion_matrix(after["metrics"]["confusion_matrix"], LABEL_NAMES),
        "",
        f"sample     {sample['text']!r} -> {sample['label']} (p={sample['probability']:.3f})",
        f"train      {train['steps']} steps, {train['epochs']:.2f} epochs in {train['seconds']:.1f} s "
        f"({train['examples_per_second']:.1f} examples/s)",
        *([f"resumed    from {train['resumed_from']} ({train['steps_this_run']} steps in this run)"]
          if train["resumed_from"] else []),
        f"eval       before {timings['eval_before_s']:.2f} s, after {timings['eval_after_s']:.2f} s "
        f"({after['examples']} examples each)",
        f"total      {timings['total_s']:.1f} s wall, peak RSS {report['peak_rss_mib']:.0f} MiB",
        f"model dir  {report['model_dir'] or '(not saved: --save_model false)'}",
        f"checkpoint {report['latest_checkpoint'] or '(none saved; see --checkpoint_every)'}",
        f"evals      {report['eval_history']}",
        f"plot       {report['plot']}",
        *([f"log        {report['log_file']}"] if report.get("log_file") else []),
    ]
    return "\n".join(lines)


TASKS = ("sequence-classification", "causal-lm")


def split_task(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The --task value (default sequence-classification) and the remaining flags, which belong to that task."""
    task_only = CliArgumentParser(add_help=False, allow_abbrev=False)
    task_only.add_argument("--task", choices=TASKS, default=TASKS[0])
    known, rest = task_only.parse_known_args(argv)
    return known.task, rest


def launch_distributed(argv: Sequence[str]) -> int | None:
    """With the launcher flags (--nproc_per_node, --nnodes, --max_restarts) and not yet in a rank: check the job's
    flags here (bad input: one line, before any process starts), then run this entry point on torchrun with the same
    flags and return its exit code. None: train in this process."""
    task, rest = split_task(argv)
    launch = distributed.parse_launch(rest)
    if not launch.wants_launch or distributed.in_rank():
        return None
    setup_logging()
    config = parse_config(rest, parser=causal_lm.build_causal_lm_parser() if task == "causal-lm" else None)
    config.check_world(launch.world_size)
    setup_logging(config.console_log_level)
    return distributed.launch(launch, "src.training.train_model", list(argv), timeout_s=config.ddp_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    launched = launch_distributed(argv)
    if launched is not None:
        return launched
    task, argv = split_task(argv)
    if task == "causal-lm":
        return causal_lm.main(argv)
    setup_logging()  # before the flags are read: bad input is reported as one line
    config = parse_config(argv)
    setup_logging(config.console_log_level)
    with main_process_run_log(config.log_file, shlex.join(["train_model", *argv]), config.console_log_level) as run_log:
        report = run(config, run_log)
    if not distributed.is_main_process():
        return 0
    print(format_report(report))
    accuracy = report["after"]["metrics"]["accuracy"]
    if config.expect_min_accuracy is not None and accuracy < config.expect_min_accuracy:
        print(
            f"error: validation accuracy {accuracy:.4f} is below --expect_min_accuracy {config.expect_min_accuracy}",
            file=sys.stderr,
        )
        return EXIT_QUALITY_GATE
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
