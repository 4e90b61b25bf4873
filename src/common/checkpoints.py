"""Trainer checkpoints that are complete or ignored, and resumed runs that match uninterrupted ones.

transformers' `Trainer._save_checkpoint` writes `checkpoint-<step>/` file by file straight into its final place
(weights, optimizer, scheduler, RNG states, trainer_state.json), then deletes old checkpoints. A run killed during a
save leaves a directory that looks like a checkpoint but is not one, and the rotation may already have deleted
the previous good one. `ResumableTrainer` fixes both:

  1. the Trainer saves as usual; 2. every file is fsynced and a marker (`checkpoint_complete.json`: the step and
  each file's size) is written last, atomically; 3. only then are old checkpoints deleted (marker first).

`latest_complete_checkpoint` accepts only a directory with a marker whose files are all there with their recorded
sizes, so a killed save (no marker, perhaps a leftover temp file of one) or a half-deleted or truncated checkpoint
is skipped with a warning.

It also makes the length-grouped batch order a function of (seed, epoch) alone: transformers' LengthGroupedSampler
draws from torch's global RNG, whose state at the start of an epoch differs between a resumed run and an
uninterrupted one, so the resumed run would see other batches.
"""

import copy
import json
import logging
import os
import re
import shutil
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import seed_worker
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from src.common import distributed
from src.common.paths import atomic_write_json

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"  # written last: a checkpoint without it is incomplete
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def list_checkpoints(root: str | os.PathLike) -> list[Checkpoint]:
    """The `checkpoint-<step>` directories under `root`, complete or not, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        Checkpoint(int(match[1]), entry)
        for entry in root.iterdir()
        if (match := CHECKPOINT_NAME.match(entry.name)) and entry.is_dir()
    ]
    return sorted(found, key=lambda c: c.step)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a `checkpoint-<step>` directory was saved at."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named {PREFIX_CHECKPOINT_DIR}-<step>")
    return int(match[1])


def _files(path: Path) -> dict[str, int]:
    """Every file under `path` except the marker, as relative path -> size in bytes."""
    return {
        str(f.relative_to(path)): f.stat().st_size
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != COMPLETE_MARKER
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(path: str | os.PathLike, step: int, world_size: int = 1) -> None:
    """Declare a fully written checkpoint complete: flush its files to disk, then write the marker atomically."""
    path = Path(path)
    files = _files(path)
    for name in files:
        _fsync(path / name)
    for directory in {(path / name).parent for name in files} | {path}:
        _fsync(directory)  # the directory entries too, so the files survive a power loss, not just a kill
    atomic_write_json(path / COMPLETE_MARKER, {"step": step, "world_size": world_size, "files": files})


def saved_world_size(path: str | os.PathLike) -> int:
    """The number of processes that saved a complete checkpoint (1 for checkpoints from before it was recorded)."""
    marker = json.loads((Path(path) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    return int(marker.get("world_size", 1))


def incompleteness(path: str | os.PathLike) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None if it is complete."""
    path = Path(path)
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {COMPLETE_MARKER}: its save did not finish"
    except (OSError, ValueError) as e:
        return f"unreadable {COMPLETE_MARKER} ({e})"
    expected = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(expected, dict) or not expected:
        return f"{COMPLETE_MARKER} lists no files"
    for name, size in expected.items():
        file = path / name
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:
            return f"{name} is missing or changed since the save ({actual} bytes, expected {size})"
    return None


def latest_complete_checkpoint(root: str | os.PathLike) -> Checkpoint | None:
    """The newest complete checkpoint under `root`; newer incomplete ones are skipped with a warning."""
    for checkpoint in reversed(list_checkpoints(root)):
        problem = incompleteness(checkpoint.path)
        if problem is None:
            return checkpoint
        logger.warning("ignoring incomplete checkpoint %s: %s", checkpoint.path, problem)
    return None


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint, marker first, so that one half deleted by a kill never looks complete."""
    path = Path(path)
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(root: str | os.PathLike, keep: int | None, protect: str | os.PathLike | None = None) -> None:
    """Delete incomplete checkpoints and all but the newest `keep` complete ones, except `protect`.

    `keep` None or <= 0 keeps every complete checkpoint, as transformers' `save_total_limit` does.

    Called right after a checkpoint was marked complete, when any unmarked one is a leftover of a killed save.
    """
    protected = Path(protect).resolve() if protect else None
    complete = []
    for checkpoint in list_checkpoints(root):
        if incompleteness(checkpoint.path) is None:
            complete.append(checkpoint)
        else:
            logger.info("removing incomplete checkpoint %s", checkpoint.path)
            remove_checkpoint(checkpoint.path)
    if keep is None or keep <= 0:
        return
    for checkpoint in complete[:-keep]:
        if checkpoint.path.resolve() != protected:
            remove_checkpoint(checkpoint.path)


class GlobalBatchSampler:
    """Micro-batches of the same global batches whatever the world size: a batch sampler for DataLoader.

    The order is a function of (seed, epoch) alone — transformers' samplers draw from torch's global RNG, whose state
    at the start of an epoch differs between a resumed run and an uninterrupted one — and of the global batch, not of
    the world size: group_by_length sorts megabatches by length as transformers' LengthGroupedSampler does for that
    batch; random is a seeded permutation; sequential the data's order. Each global batch (the last of an epoch may
    be smaller) is cut into `world` contiguous shares, each share into `accumulation` micro-batches, yielded
    accumulation-step-major so that accelerate's BatchSamplerShard (batch i goes to rank i % world) hands rank r
    its share. One process thus takes the micro-batches a single process takes today, and N processes take the same
    examples per optimizer step between them.
    """

    def __init__(self, num_examples: int, global_batch: int, world: int, accumulation: int, seed: int,
                 strategy: str = "group_by_length", lengths: list[int] | None = None):
        if strategy == "group_by_length" and lengths is None:
            raise ValueError("group_by_length needs the examples' lengths")
        self.num_examples, self.global_batch, self.world, self.accumulation = num_examples, global_batch, world, accumulation
        self.seed, self.strategy, self.lengths = seed, strategy, lengths
        self.epoch = 0
        self.parts = world * accumulation  # micro-batches per optimizer step, all ranks together

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.strategy == "group_by_length":
            return list(get_length_grouped_indices(self.lengths, self.global_batch, generator=generator))
        if self.strategy == "random":
            return torch.randperm(self.num_examples, generator=generator).tolist()
        return list(range(self.num_examples))

    def global_batches(self) -> list[list[int]]:
        order = self.order()
        batches = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        if batches and len(batches[-1]) < self.parts:  # too few examples left to give every micro-batch one
            dropped = batches.pop()
            logger.debug("dropping the last %d examples of the epoch (fewer than %d micro-batches)", len(dropped),
                         self.parts)
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            shares = _split(batch, self.world)
            micro = [_split(share, self.accumulation) for share in shares]
            for step in range(self.accumulation):
                for rank in range(self.world):
                    yield micro[rank][step]

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.global_batch)
        return (full + (rest >= self.parts)) * self.parts


def _split(items: list[int], parts: int) -> list[list[int]]:
    """`items` in `parts` contiguous pieces whose sizes differ by at most one (larger first)."""
    size, extra = divmod(len(items), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        pieces.append(items[start:end])
        start = end
    return pieces


class ResumableTrainer(Trainer):
    """A Trainer whose checkpoints are complete or ignored, and whose resumed runs replay the same batches.

    Checkpoints go to `args.output_dir`; `args.save_total_limit` is honoured, but old checkpoints are deleted only
    after the new one is complete. Resume with `train(resume_from_checkpoint=latest_complete_checkpoint(...).path)`.
    """

    def __init__(self, *, args: TrainingArguments, **kwargs):
        self.checkpoints_to_keep = args.save_total_limit
        args = copy.copy(args)
        args.save_total_limit = None  # the Trainer's rotation runs before our marker; ours runs after it
        super().__init__(args=args, **kwargs)
        if os.environ.get(distributed.KILL_RANK_AT_STEP_ENV):
            self.add_callback(_KillRankAtStep())

    def get_train_dataloader(self) -> DataLoader:
        """Batches from GlobalBatchSampler (same examples per optimizer step on any number of processes); the
        Trainer's own for batch_rebalance."""
        args = self.args
        strategy = args.train_sampling_strategy
        if strategy not in ("group_by_length", "random", "sequential"):
            return super().get_train_dataloader()
        dataset = self.train_dataset
        lengths = list(dataset[args.length_column_name]) if strategy == "group_by_length" else None
        sampler = GlobalBatchSampler(
            len(dataset),
            global_batch=args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
            world=args.world_size,
            accumulation=args.gradient_accumulation_steps,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            strategy=strategy,
            lengths=lengths,
        )
        workers = args.dataloader_num_workers
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=args.process_index),
            **({"persistent_workers": args.dataloader_persistent_workers} if workers else {}),
        )
        return self.accelerator.prepare(loader)

    def _save_checkpoint(self, model, trial) -> None:
        """Every rank writes its part (rank 0 the model, optimizer and state; each rank its RNG state), then rank 0
        marks the checkpoint complete once all have finished, recording the world size it was saved by."""
        path = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and path.exists():  # left by a killed save of this step, in the run this resumes
            logger.warning("replacing %s, left over from an interrupted save", path)
            remove_checkpoint(path)
        self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every rank's files are written
        if self.args.should_save:
            mark_complete(path, self.state.global_step, world_size=self.args.world_size)
            prune_checkpoints(path.parent, self.checkpoints_to_keep, protect=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()


class _KillRankAtStep(TrainerCallback):
    """distributed.KILL_RANK_AT_STEP_ENV's test hook: a real SIGKILL of one rank after an optimizer step."""

    def on_step_end(self, args, state, control, **kwargs):
        distributed.maybe_kill_self(state.global_step)
