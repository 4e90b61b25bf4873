"""Benchmark: the seed recipe vs this job's default path, on the same model, data and machine.

    bazel run //src/training:bench_training -- [--data D] [--steps N] [--mode throughput|time_to_accuracy]
                                               [-- any train_model flag for the default path]

throughput (the default) runs both recipes for a fixed number of optimizer steps and compares examples/s
(timed after a few warm-up steps). The seed recipe is the one this project started from: Hugging Face Trainer,
every sentence padded to 128 tokens, batch 16, fp32, lr 5e-5, adamw_torch, random batches, the model's own dropout,
SDPA attention. The default path is `train_model` with no flags (dynamic padding, length-grouped batches, no dropout,
eager attention, bf16 where the CPU has it, fused AdamW). Both draw their batches from the seed's budget, half of the
training split. It also measures the machine's matmul roof (fp32 and bf16 GFLOP/s) and the training FLOP/s each
recipe achieved.

time_to_accuracy trains the default path within the seed's budget (half of the training split, 2 epochs) and
evaluates on the validation split every --eval_every steps until the accuracy first reaches --target_accuracy; it
reports the wall time.

Writes <output_dir>/bench_training.json; the last line printed is `speedup_vs_seed: <ratio>x`
(throughput mode) or `time_to_accuracy_s: <seconds>` (time_to_accuracy mode).
"""

from src.common.allocator import allocator_in_use, restart_with_fast_allocator

if __name__ == "__main__":  # before the heavy imports below: the process it replaces should not pay for them
    restart_with_fast_allocator()

import argparse
import logging
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import torch
import transformers
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)

from src.common.cpu import configure_threads, cpu_flags, supports_bf16
from src.common.classify import evaluate
from src.common.data import LabelledData, PaddingCollator, load_data, tokenize
from src.common.errors import CliArgumentParser, UserError, run_cli
from src.common.logging_utils import setup_logging
from src.common.models import dropout_layers, load_tokenizer, resolve_model_source
from src.common.paths import atomic_write_json, default_output_dir
from src.common.roofline import matmul_roof
from src.training.config import FinetuneConfig, parse_config
from src.training.train_model import load_classifier

logger = logging.getLogger(__name__)

JOB_NAME = "bench_training"
RESULT_FILE = "bench_training.json"

# --- Benchmark defaults ---
# The shipped set, so the benchmark runs on any checkout; the figures in docs/ are SST-2's (--data DIR, see there).
DEFAULT_DATA = "builtin:sentiment_small"
STEPS = 40  # optimizer steps per recipe in throughput mode
# The seed's budget, which both modes train within: half of the train split (both recipes draw their batches from
# it), 2 epochs (the time_to_accuracy run's length, and so its learning-rate schedule).
SEED_BUDGET = {"train_fraction": 0.5, "num_train_epochs": 2}
WARMUP_STEPS = 5  # steps excluded from timing (allocator, oneDNN kernel selection, lazy init)
TARGET_ACCURACY = 0.88  # time_to_accuracy target on the validation split
EVAL_EVERY = 100  # optimizer steps between evaluations in time_to_accuracy mode
ROOF_SHAPES = (  # (m, k, n) matmuls of MiniLM at batch x tokens = 2048 rows: FFN up, FFN down, a projection
    (2048, 384, 1536),
    (2048, 1536, 384),
    (2048, 384, 384),
)

# The seed recipe, as it was before this project made it fast.
SEED_RECIPE = {
    "max_length": 128,  # every example padded to this many tokens
    "per_device_train_batch_size": 16,
    "learning_rate": 5e-5,
    "optim": "adamw_torch",
    "train_sampling_strategy": "random",
    "precision": "fp32",
    "dropout": None,  # the model's own (0.1 for MiniLM)
    "attn_implementation": "sdpa",  # transformers' default
}


@dataclass
class RecipeResult:
    name: str
    steps_timed: int
    seconds: float
    examples: int
    tokens_executed: int  # tokens the model ran on, padding included
    tokens_real: int  # tokens excluding padding
    examples_per_second: float
    train_tflop: float  # executed training FLOPs in the timed steps, 1e12
    gflops_per_second: float  # executed training FLOP/s
    dropout: list[float]  # the dropout probabilities the trained model's dropout layers had
    attention: str  # the attention kernel it ran (eager, sdpa)


class StepTimer(TrainerCallback):
    """Times optimizer steps after a warm-up, and counts the examples and tokens of the timed steps."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.start: float | None = None
        self.end: float | None = None
        self.timed_steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            self.start = perf_counter()
        elif state.global_step > self.warmup_steps:
            self.end = perf_counter()
            self.timed_steps = state.global_step - self.warmup_steps


class CountingCollator:
    """Wraps a collator and counts examples and tokens (executed and real) of every batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[tuple[int, int, int]] = []  # (examples, executed tokens, real tokens)

    def __call__(self, features):
        batch = self.collator(features)
        self.batches.append(
            (batch["input_ids"].shape[0], batch["input_ids"].numel(), int(batch["attention_mask"].sum()))
        )
        return batch


def training_flops(model: torch.nn.Module, batches: Sequence[tuple[int, int, int]]) -> float:
    """Executed training FLOPs: 6 x matmul parameters per token, plus attention scores and mixing (fwd + bwd).

    Embedding tables are lookups, not matmuls, so they are excluded. For each batch of b examples padded to
    length s: 6 * P * b * s + 12 * layers * hidden * b * s^2.
    """
    config = model.config
    matmul_params = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    total = 0.0
    for examples, tokens, _ in batches:
        seq = tokens / examples
        total += 6 * matmul_params * tokens + 12 * config.num_hidden_layers * config.hidden_size * examples * seq * seq
    return total


def load_model(config: FinetuneConfig, data: LabelledData) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and a freshly seeded sequence classifier for the data's classes, as train_model sets them up."""
    source = resolve_model_source(config.model)
    return load_tokenizer(source), load_classifier(config, source, data)


def run_recipe(name: str, config: FinetuneConfig, steps: int, warmup: int, pad_to: int | None) -> RecipeResult:
    """Train `steps` optimizer steps with the Trainer as `config` says; time the steps after `warmup`."""
    # Batches come from the whole training set the full run uses: the length-grouped sampler sorts mega-batches of
    # 50 batches, so a sample of only `steps` batches would pad more than a real run does.
    data = load_data(
        config.data, columns=config.columns, label_names=config.class_name_list, train_fraction=config.train_fraction,
        max_train_samples=config.max_train_samples, seed=config.seed,
    )
    tokenizer, model = load_model(config, data)
    train_set = tokenize(data.splits, tokenizer, config.max_length)["train"]
    if pad_to is None:
        collator = PaddingCollator(tokenizer)  # dynamic: each batch padded to its longest example
    else:
        train_set = train_set.remove_columns("length")
        collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=pad_to)
    counter = CountingCollator(collator)
    timer = StepTimer(warmup)
    config.max_steps = steps
    config.eval_strategy = "no"
    config.save_strategy = "no"
    config.disable_tqdm = True
    config.logging_steps = steps
    trainer = Trainer(model=model, args=config, data_collator=counter, train_dataset=train_set, callbacks=[timer])
    batch, precision = config.per_device_train_batch_size, config.resolved_precision
    logger.info("%s: %d steps of batch %d, %s", name, steps, batch, precision)
    trainer.train()
    if timer.start is None or timer.end is None:
        raise UserError(f"--steps must exceed the {warmup} warm-up steps")
    # The collator runs one batch ahead of the optimizer at most; count the batches of the timed steps.
    timed = counter.batches[warmup : warmup + timer.timed_steps]
    seconds = timer.end - timer.start
    examples = sum(b[0] for b in timed)
    flops = training_flops(model, timed)
    return RecipeResult(
        name=name,
        steps_timed=timer.timed_steps,
        seconds=seconds,
        examples=examples,
        tokens_executed=sum(b[1] for b in timed),
        tokens_real=sum(b[2] for b in timed),
        examples_per_second=examples / seconds,
        train_tflop=flops / 1e12,
        gflops_per_second=flops / seconds / 1e9,
        dropout=sorted({layer.p for layer in dropout_layers(model)}),
        attention=model.config._attn_implementation,
    )


class StopAtAccuracy(TrainerCallback):
    """Evaluates every `every` steps with the job's evaluator and stops once accuracy reaches `target`."""

    def __init__(self, model, eval_set, collator, config: FinetuneConfig, target: float, every: int):
        self.model, self.eval_set, self.collator, self.config = model, eval_set, collator, config
        self.target, self.every = target, every
        self.start = perf_counter()
        self.eval_seconds = 0.0
        self.history: list[dict[str, float]] = []
        self.reached_at: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every and not control.should_training_stop:
            return
        evaluation = evaluate(
            self.model, self.eval_set, self.collator, self.config.per_device_eval_batch_size,
            self.config.resolved_precision,
        )
        self.model.train()
        self.eval_seconds += evaluation.seconds
        accuracy = evaluation.metrics["accuracy"]
        elapsed = perf_counter() - self.start
        self.history.append({"step": state.global_step, "accuracy": accuracy, "wall_s": elapsed})
        logger.info("step %d: accuracy %.4f at %.1f s", state.global_step, accuracy, elapsed)
        if accuracy >= self.target:
            self.reached_at = elapsed
            control.should_training_stop = True


def time_to_accuracy(config: FinetuneConfig, target: float, every: int) -> dict[str, Any]:
    data = load_data(config.data, columns=config.columns, label_names=config.class_name_list,
                     train_fraction=config.train_fraction, seed=config.seed)
    tokenizer, model = load_model(config, data)
    encoded = tokenize(data.splits, tokenizer, config.max_length)
    collator = PaddingCollator(tokenizer)
    config.eval_strategy = "no"
    config.save_strategy = "no"
    stopper = StopAtAccuracy(model, encoded["validation"], collator, config, target, every)
    trainer = Trainer(
        model=model, args=config, data_collator=collator, train_dataset=encoded["train"], callbacks=[stopper]
    )
    stopper.start = perf_counter()
    trainer.train()
    total = perf_counter() - stopper.start
    return {
        "target_accuracy": target,
        "reached": stopper.reached_at is not None,
        "time_to_accuracy_s": stopper.reached_at,
        "train_examples": len(encoded["train"]),
        "steps": trainer.state.global_step,
        "wall_s": total,
        "eval_s": stopper.eval_seconds,
        "best_accuracy": max(h["accuracy"] for h in stopper.history),
        "history": stopper.history,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = CliArgumentParser(prog="bench_training", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--mode", choices=("throughput", "time_to_accuracy"), default="throughput")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"data for both recipes (default {DEFAULT_DATA})")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps per recipe (default {STEPS})")
    parser.add_argument("--warmup_steps", type=int, default=WARMUP_STEPS, help="untimed steps first")
    parser.add_argument("--target_accuracy", type=float, default=TARGET_ACCURACY)
    parser.add_argument("--eval_every", type=int, default=EVAL_EVERY, help="steps between evaluations")
    parser.add_argument("--output_dir", help=f"where {RESULT_FILE} goes (default ./outputs/{JOB_NAME})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    own, job_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    if not 0 < args.target_accuracy <= 1:
        raise UserError(f"--target_accuracy must be in (0, 1], got {args.target_accuracy}")
    if args.eval_every < 1:
        raise UserError(f"--eval_every must be >= 1, got {args.eval_every}")
    if args.steps <= args.warmup_steps:
        raise UserError(f"--steps ({args.steps}) must exceed --warmup_steps ({args.warmup_steps})")
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(JOB_NAME)
    common = ["--data", args.data, "--output_dir", str(output_dir / "runs"), "--save_model", "false"]
    common += [x for name, value in SEED_BUDGET.items() for x in (f"--{name}", str(value))]
    threads = configure_threads()
    report: dict[str, Any] = {
        "mode": args.mode,
        "data": args.data,
        "threads": threads,
        "allocator": allocator_in_use(),
        "cpu_bf16": supports_bf16(cpu_flags()),
        "machine": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    if args.mode == "time_to_accuracy":
        config = parse_config(common + job_flags)
        report["default_path"] = {"precision": config.resolved_precision, "batch": config.per_device_train_batch_size}
        report |= time_to_accuracy(config, args.target_accuracy, args.eval_every)
        atomic_write_json(output_dir / RESULT_FILE, report)
        reached = report["time_to_accuracy_s"]
        print(f"best accuracy {report['best_accuracy']:.4f} after {report['steps']} steps, {report['wall_s']:.1f} s")
        print(f"time_to_accuracy_s: {reached:.1f}" if reached is not None else "time_to_accuracy_s: not reached")
        return 0 if reached is not None else 1

    roof = {"fp32": matmul_roof(torch.float32, ROOF_SHAPES), "bf16": matmul_roof(torch.bfloat16, ROOF_SHAPES)}
    seed_flags = [x for name, value in SEED_RECIPE.items() if value is not None for x in (f"--{name}", str(value))]
    seed_config = parse_config(common + seed_flags)
    for name, value in SEED_RECIPE.items():
        if value is None:  # no flag spells None ("the model's own"): set it on the parsed config
            setattr(seed_config, name, value)
    seed = run_recipe("seed", seed_config, args.steps, args.warmup_steps, pad_to=128)
    fast_config = parse_config(common + job_flags)
    fast = run_recipe("default", fast_config, args.steps, args.warmup_steps, pad_to=None)
    speedup = fast.examples_per_second / seed.examples_per_second
    fast_roof = roof["bf16" if fast_config.resolved_precision == "bf16" else "fp32"]["roof"]
    report |= {
        "roof_gflops": roof,
        "seed": asdict(seed),
        "default": asdict(fast) | {"precision": fast_config.resolved_precision},
        "speedup_vs_seed": speedup,
        "default_roof_fraction": fast.gflops_per_second / fast_roof,
        "seed_roof_fraction": seed.gflops_per_second / roof["fp32"]["roof"],
    }
    atomic_write_json(output_dir / RESULT_FILE, report)

    print(f"matmul roof      fp32 {roof['fp32']['roof']:7.1f} GFLOP/s   bf16 {roof['bf16']['roof']:7.1f} GFLOP/s")
    print(f"{'recipe':<8} {'examples/s':>10} {'tokens/ex':>9} {'pad waste':>9} {'GFLOP/s':>8} {'of roof':>7}")
    for result, roof_rate in ((seed, roof["fp32"]["roof"]), (fast, fast_roof)):
        waste = 1 - result.tokens_real / result.tokens_executed
        print(
            f"{result.name:<8} {result.examples_per_second:>10.1f} {result.tokens_executed / result.examples:>9.1f} "
            f"{waste:>9.0%} {result.gflops_per_second:>8.1f} {result.gflops_per_second / roof_rate:>7.0%}"
        )
    print(f"wrote {output_dir / RESULT_FILE}")
    print(f"speedup_vs_seed: {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
