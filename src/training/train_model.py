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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from time import perf_counter
from typing import Any

import datasets
import torch
import transformers
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from src.common import distributed
from src.common.checkpoints import ResumableTrainer, checkpoint_step, latest_complete_checkpoint
from src.common.cpu import (
    configure_threads,
    peak_rss_mib,
)
from src.common.classify import (
    MODEL_SUBDIR,
    Evaluation,
    evaluate,
    predict_one,
    quality_gate_exit_code,
)
from src.common.data import LabelledData, PaddingCollator, load_data, tokenize
from src.common.errors import CliArgumentParser, run_cli
from src.common.logging_utils import (
    RunLog,
    held_load_reports,
    load_report_rows,
    main_process_run_log,
    pass_on,
    setup_logging,
)
from src.common.metrics import (
    classification_metrics,
    format_confusion_matrix,
    format_per_class,
    format_scores,
)
from src.common.models import load_sequence_classifier, load_tokenizer, resolve_model_source
from src.common.paths import atomic_dir, atomic_write_json
from src.common.plots import plot_training_curves
from src.common.training_logs import EvalHistory, EvalHistoryCallback, report_progress
from src.training import causal_lm
from src.training.config import FinetuneConfig, parse_config

logger = logging.getLogger(__name__)

# <output_dir>/model (classify.MODEL_SUBDIR): fine-tuned weights + tokenizer, loadable with from_pretrained
METRICS_FILE = "metrics.json"  # <output_dir>/metrics.json: everything the summary table shows, and more
EVAL_HISTORY_FILE = "eval_history.json"  # <output_dir>/eval_history.json: every evaluation, with step and epoch
PLOT_FILE = "training_curves.png"  # <output_dir>/training_curves.png: training loss and validation accuracy
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "macro_f1")  # the Trainer's evaluation logs


def trainer_metrics(num_labels: int) -> Callable[[EvalPrediction], dict[str, float]]:
    """Scalar metrics for the Trainer's per-epoch evaluation logs."""

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        metrics = classification_metrics(eval_pred.predictions.argmax(axis=-1), eval_pred.label_ids, num_labels)
        return {name: metrics[name] for name in METRIC_NAMES}

    return compute


def classification_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy summed over the micro-batch and divided by the examples of the whole optimizer step (all
    micro-batches, all processes: the Trainer's num_items_in_batch), so a step's loss is the mean over its global
    batch however it is split: 1 process x 64, 2 x 32, or micro-batches of unequal size."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    total = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def sample_prediction(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: FinetuneConfig, data: LabelledData
) -> dict[str, Any]:
    """--sample_text classified; for sentence pairs, the first validation pair (a single text means nothing)."""
    if data.pair:
        first = data["validation"][0]
        return predict_one(model, tokenizer, first["text"], config.resolved_precision, config.max_length,
                           text_pair=first["text_pair"])
    return predict_one(model, tokenizer, config.sample_text, config.resolved_precision, config.max_length)


def headline(evaluation: Evaluation) -> str:
    """accuracy and F1 (macro F1 too with more than two classes) as a log line's text."""
    metrics = evaluation.metrics
    macro = f", macro f1 {metrics['macro_f1']:.4f}" if len(evaluation.label_names) > 2 else ""
    return f"accuracy {metrics['accuracy']:.4f}, f1 {metrics['f1']:.4f}{macro}"


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


def load_classifier(config: FinetuneConfig, source: str, data: LabelledData) -> PreTrainedModel:
    """The classifier as the job trains it: a new head for the data's classes (named in its config's id2label),
    seeded by --seed, with --dropout and --attn_implementation."""
    set_seed(config.seed)  # before the model load: the new classifier head is randomly initialised
    with held_load_reports() as reports:
        model = load_sequence_classifier(
            source,
            num_labels=len(data.label_names),
            id2label=data.id2label,
            label2id=data.label2id,
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
        columns=config.columns,
        label_names=config.class_name_list,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        train_fraction=config.train_fraction,
        seed=config.seed,
    )
    logger.info("model %s (%s), data %s, %s, %d threads", config.model, source, config.data, precision, threads)
    tokenizer = load_tokenizer(source)
    model = load_classifier(config, source, raw)
    model.config.cpu_finetune_sentence_pairs = raw.pair  # saved in config.json: evaluate/predict check their input
    encoded = tokenize(raw.splits, tokenizer, config.max_length)
    train_set, eval_set = encoded["train"], encoded["validation"]
    collator = PaddingCollator(tokenizer)
    log_path = run_log.open() if run_log else None
    setup_seconds = perf_counter() - started

    # --- 2. Evaluate before ---
    eval_batch = config.per_device_eval_batch_size
    before = evaluate(model, eval_set, collator, eval_batch, precision, config.progress("evaluate before"))
    logger.info("before fine-tuning: %s", headline(before))
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
        compute_metrics=trainer_metrics(len(raw.label_names)),
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
    logger.info("after fine-tuning: %s", headline(after))
    history.add("after", step=trainer.state.global_step, epoch=trainer.state.epoch, metrics=history_metrics(after))
    sample = sample_prediction(model, tokenizer, config, raw)

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
        "classes": list(raw.label_names),
        "sentence_pairs": raw.pair,
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
    sample, examples, classes = report["sample_prediction"], report["examples"], report["classes"]
    lines = [
        f"model      {report['model']}",
        f"data       {report['data']} ({examples['train']} train / {examples['validation']} validation)",
        f"classes    {len(classes)}: {', '.join(classes)}{' (sentence pairs)' if report['sentence_pairs'] else ''}",
        f"precision  {report['precision']}, {report['threads']} threads, {report['allocator']} malloc",
        *([f"distrib.   {distributed.describe_report(report['distributed'])}"]
          if report["distributed"]["world_size"] > 1 else []),
        "",
        *format_scores({"before": before, "after": after}, len(classes)),
        "",
        *(["per class after:", format_per_class(after["metrics"]["per_class"]), ""] if len(classes) > 2 else []),
        "confusion matrix before:",
        format_confusion_matrix(before["metrics"]["confusion_matrix"], classes),
        "confusion matrix after:",
        format_confusion_matrix(after["metrics"]["confusion_matrix"], classes),
        "",
        f"sample     {sample['text']!r}{' + ' + repr(sample['text_pair']) if 'text_pair' in sample else ''} -> "
        f"{sample['label']} (p={sample['probability']:.3f})",
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
    return quality_gate_exit_code(report["after"]["metrics"], config.expect_min_accuracy, config.expect_min_macro_f1)


if __name__ == "__main__":
    sys.exit(run_cli(main))
