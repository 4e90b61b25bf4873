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
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

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


def mark_complete(path: str | os.PathLike, step: int) -> None:
    """Declare a fully written checkpoint complete: flush its files to disk, then write the marker atomically."""
    path = Path(path)
    files = _files(path)
    for name in files:
        _fsync(path / name)
    for directory in {(path / name).parent for name in files} | {path}:
        _fsync(directory)  # the directory entries too, so the files survive a power loss, not just a kill
    atomic_write_json(path / COMPLETE_MARKER, {"step": step, "files": files})


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


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler with an order that depends only on (seed, epoch).

    The Trainer calls `set_epoch` before every epoch, including the one a resumed run starts in the middle of.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


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

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def _save_checkpoint(self, model, trial) -> None:
        path = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if path.exists():  # left by a save of this step that was killed, in the run this one resumes
            logger.warning("replacing %s, left over from an interrupted save", path)
            remove_checkpoint(path)
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            mark_complete(path, self.state.global_step)
            prune_checkpoints(path.parent, self.checkpoints_to_keep, protect=self.state.best_model_checkpoint)
