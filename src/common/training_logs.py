"""What a Trainer run reports while it runs: examples/s in the progress bar and logs, every evaluation in a JSON
file."""

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from src.common.paths import atomic_write_json

logger = logging.getLogger(__name__)

EVAL_PREFIX = "eval_"  # the Trainer's metric_key_prefix for evaluations during training


def examples_per_step(args: TrainingArguments) -> int:
    """Training examples per optimizer step: batch size x gradient accumulation x processes."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


class ThroughputCallback(TrainerCallback):
    """Adds `examples_per_second` to every training-loss log line (the progress bar shows steps/s and the ETA).

    Counted from where this process started training, so a resumed run is not flattered by the steps it skipped.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = perf_counter()
        self.start_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # only training-loss logs, which come after on_train_begin
            return
        steps, seconds = state.global_step - self.start_step, perf_counter() - self.start_time
        logs["examples_per_second"] = round(steps * examples_per_step(args) / seconds, 1)


class ExamplesProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, elapsed, ETA) with training examples/s since this run started."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.start_time, self.start_step = perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        seconds = perf_counter() - self.start_time
        if self.training_bar is not None and seconds > 0:
            rate = (state.global_step - self.start_step) * examples_per_step(args) / seconds
            self.training_bar.set_postfix_str(f"{rate:.1f} examples/s", refresh=False)


def show_examples_per_second(trainer: Trainer) -> None:
    """Swap the Trainer's progress bar for one that shows examples/s (no-op with --disable_tqdm)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ExamplesProgressCallback())


class EvalHistory:
    """Every evaluation of a run in step order, in a JSON list rewritten atomically after each one.

    An entry is {"stage": "before" | "during" | "after", "step", "epoch", "loss", "accuracy", ...}: the stage says
    whether it was the evaluation before training, one the Trainer ran during training, or the one after.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
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
