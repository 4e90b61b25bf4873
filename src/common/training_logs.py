"""What a Trainer run reports while it runs: one progress bar with throughput and the latest loss, a log line per
Trainer log, every evaluation in a JSON file."""

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from src.common.logging_utils import FILE_ONLY, progress_bar
from src.common.paths import atomic_write_json

logger = logging.getLogger(__name__)

EVAL_PREFIX = "eval_"  # the Trainer's metric_key_prefix for evaluations during training
TRAIN_PHASE = "train"  # the training progress bar's name


def examples_per_step(args: TrainingArguments) -> int:
    """Training examples per optimizer step: batch size x gradient accumulation x processes."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


class Throughput:
    """Training throughput since this process started training, so a resumed run is not flattered by the steps it
    skipped: tokens/s where the Trainer counts input tokens (--include_num_input_tokens_seen), else examples/s."""

    def __init__(self):
        self.start_time: float | None = None

    def start(self, state: TrainerState) -> None:
        self.start_time, self.start_step = perf_counter(), state.global_step
        self.start_tokens = state.num_input_tokens_seen

    def describe(self, args: TrainingArguments, state: TrainerState) -> str:
        """E.g. "5.7 examples/s" or "421 tokens/s"; "" before the first step."""
        seconds = perf_counter() - self.start_time if self.start_time is not None else 0.0
        if seconds <= 0 or state.global_step == self.start_step:
            return ""
        if args.include_num_input_tokens_seen != "no":
            return f"{(state.num_input_tokens_seen - self.start_tokens) / seconds:.0f} tokens/s"
        return f"{(state.global_step - self.start_step) * examples_per_step(args) / seconds:.1f} examples/s"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_logs(logs: Mapping[str, Any], state: TrainerState, throughput: str = "") -> str:
    """One Trainer log as a line: "step 10/24 (epoch 1.25): loss 0.6725, grad norm 0.539, lr 7.14e-05, 5.7
    examples/s", "step 8/24 (epoch 1.00): eval loss 0.4624, accuracy 0.9, ... (6.4 s)", or the end of training."""
    at = f"step {state.global_step}/{state.max_steps} (epoch {state.epoch or 0:.2f})"
    if "train_loss" in logs:  # the Trainer's last log of train()
        return f"{at}: training done in {logs.get('train_runtime', 0):.1f} s, mean loss {_number(logs['train_loss'])}"
    if "loss" in logs:
        names = {"loss": "loss", "grad_norm": "grad norm", "learning_rate": "lr"}
        parts = [f"{label} {_number(logs[key])}" for key, label in names.items() if logs.get(key) is not None]
        return f"{at}: " + ", ".join(parts + ([throughput] if throughput else []))
    evals = {k.removeprefix(EVAL_PREFIX): v for k, v in logs.items() if k.startswith(EVAL_PREFIX)}
    if evals:
        runtime = evals.pop("runtime", None)
        metrics = [f"{k} {_number(v)}" for k, v in evals.items() if not k.endswith("_per_second")]
        return f"{at}: eval " + ", ".join(metrics) + (f" ({runtime:.1f} s)" if runtime is not None else "")
    return f"{at}: " + ", ".join(f"{k} {_number(v)}" for k, v in logs.items() if k != "epoch")


class StepLogCallback(TrainerCallback):
    """Each Trainer log (the training loss every --logging_steps, evaluations, the end of training) as one log line.

    file_only: for the log file alone, while the training progress bar shows the latest loss on the console.
    """

    def __init__(self, file_only: bool = False):
        self.file_only = file_only
        self.throughput = Throughput()

    def on_train_begin(self, args, state, control, **kwargs):
        self.throughput.start(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            line = describe_logs(logs, state, self.throughput.describe(args, state))
            logger.info("%s", line, extra={FILE_ONLY: self.file_only})


class TrainProgressCallback(TrainerCallback):
    """The training phase's one progress bar: steps, ETA, throughput since this run started, the latest loss.

    Replaces the Trainer's ProgressCallback, which writes every log dict into the bar (StepLogCallback logs them) and
    opens a second bar for each evaluation during training (here the bar says "train (evaluating)" meanwhile).
    """

    def __init__(self):
        self.bar: tqdm | None = None
        self.throughput = Throughput()
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress_bar(TRAIN_PHASE, state.max_steps, "steps", show_rate=False, initial=state.global_step)
        self.throughput.start(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            parts = [self.throughput.describe(args, state), f"loss {self.loss:.4g}" if self.loss is not None else ""]
            self.bar.set_postfix_str(", ".join(part for part in parts if part), refresh=False)
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.bar is not None and self.bar.desc == TRAIN_PHASE:
            self.bar.set_description_str(f"{TRAIN_PHASE} (evaluating)")

    def on_evaluate(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.set_description_str(TRAIN_PHASE)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def report_progress(trainer: Trainer) -> None:
    """Replace the Trainer's progress reporting (a bar that every log dict is written into; with --disable_tqdm, log
    dicts printed to stdout) with the job's: the training bar (unless --disable_tqdm) and a log line per Trainer
    log, on the console without the bar and always in the log file."""
    trainer.pop_callback(ProgressCallback)
    trainer.pop_callback(PrinterCallback)
    bars = not trainer.args.disable_tqdm
    if bars:
        trainer.add_callback(TrainProgressCallback())
    trainer.add_callback(StepLogCallback(file_only=bars))


class EvalHistory:
    """Every evaluation of a run in step order, in a JSON list rewritten atomically after each one.

    An entry is {"stage": "before" | "during" | "after", "step", "epoch", "loss", "accuracy", ...}: the stage says
    whether it was the evaluation before training, one the Trainer ran during training, or the one after.
    """

    def __init__(self, path: str | os.PathLike, write: bool = True):
        self.path = Path(path)
        self.write = write  # False in processes other than rank 0 of a distributed job: they keep it in memory
        self.entries: list[dict[str, Any]] = []

    def restore(self, up_to_step: int) -> None:
        """Take over the evaluations an interrupted run made during training, up to the step it resumes from."""
        try:
            previous = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            logger.warning("starting a new %s: the previous one is unreadable (%s)", self.path, e)
            return
        if not isinstance(previous, list):
            logger.warning("starting a new %s: the previous one is not a list of evaluations", self.path)
            return
        def kept(entry: Any) -> bool:
            step = entry.get("step") if isinstance(entry, dict) else None
            return isinstance(step, int) and step <= up_to_step and entry.get("stage") == "during"

        self.entries = [entry for entry in previous if kept(entry)]

    def add(self, stage: str, step: int, epoch: float, metrics: Mapping[str, Any]) -> None:
        """Record one evaluation's numbers (non-numeric values such as a confusion matrix are left out)."""
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
        self.entries.append({"stage": stage, "step": step, "epoch": epoch, **numbers})
        self.entries.sort(key=lambda e: e["step"])  # stable: before, during, after at the same step stay in order
        if self.write:
            atomic_write_json(self.path, self.entries)

    def points(self, metric: str) -> list[tuple[int, float]]:
        """(step, value) of one metric over the run, for plotting."""
        return [(e["step"], e[metric]) for e in self.entries if metric in e]


class EvalHistoryCallback(TrainerCallback):
    """Records each evaluation the Trainer runs during training in an EvalHistory, without the `eval_` prefix."""

    def __init__(self, history: EvalHistory):
        self.history = history

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = {k.removeprefix(EVAL_PREFIX): v for k, v in (metrics or {}).items()}
        self.history.add("during", state.global_step, state.epoch, metrics)
