import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch

from src.common import checkpoints
from src.common.checkpoints import COMPLETE_MARKER


class CheckpointFilesTest(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.root)

    def save(self, step: int, complete: bool = True) -> Path:
        """A fake checkpoint-<step> with two files, marked complete or not."""
        path = self.root / f"checkpoint-{step}"
        (path / "sub").mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"w" * step)
        (path / "sub" / "state.json").write_text("{}")
        if complete:
            checkpoints.mark_complete(path, step)
        return path

    def steps(self) -> list[int]:
        return [c.step for c in checkpoints.list_checkpoints(self.root)]

    def test_listing_by_step(self):
        for step in (10, 2, 100):
            self.save(step)
        (self.root / "checkpoint-7.tmp").mkdir()
        (self.root / "checkpoint-8").write_text("a file, not a checkpoint")
        self.assertEqual(self.steps(), [2, 10, 100])
        self.assertEqual(checkpoints.list_checkpoints(self.root / "missing"), [])
        self.assertEqual(checkpoints.checkpoint_step(self.root / "checkpoint-10"), 10)

    def test_completeness(self):
        path = self.save(5)
        self.assertIsNone(checkpoints.incompleteness(path))
        (path / "unrelated.txt").write_text("added later")  # does not break a complete checkpoint
        self.assertIsNone(checkpoints.incompleteness(path))
        (path / "sub" / "state.json").unlink()
        self.assertIn("sub/state.json is missing", checkpoints.incompleteness(path))
        (path / "sub" / "state.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"w")
        self.assertIn("model.safetensors is missing or changed", checkpoints.incompleteness(path))
        self.assertIn(COMPLETE_MARKER, checkpoints.incompleteness(self.save(7, complete=False)))
        (self.root / "checkpoint-8").mkdir()
        (self.root / "checkpoint-8" / COMPLETE_MARKER).write_text("{not json")
        self.assertIn("unreadable", checkpoints.incompleteness(self.root / "checkpoint-8"))

    def test_latest_complete_skips_newer_incomplete_ones(self):
        self.save(10)
        self.save(20)
        self.save(30, complete=False)
        with self.assertLogs(checkpoints.logger, "WARNING") as logs:
            latest = checkpoints.latest_complete_checkpoint(self.root)
        self.assertEqual(latest.step, 20)
        self.assertIn("checkpoint-30", logs.output[0])
        self.assertIsNone(checkpoints.latest_complete_checkpoint(self.root / "missing"))

    def test_prune_keeps_the_newest_complete_and_the_protected(self):
        for step in (1, 2, 3, 4):
            self.save(step)
        self.save(5, complete=False)
        checkpoints.prune_checkpoints(self.root, keep=2, protect=self.root / "checkpoint-1")
        self.assertEqual(self.steps(), [1, 3, 4])
        checkpoints.prune_checkpoints(self.root, keep=None)
        self.assertEqual(self.steps(), [1, 3, 4])
        checkpoints.prune_checkpoints(self.root, keep=1)
        self.assertEqual(self.steps(), [4])

    def test_a_deletion_killed_half_way_leaves_no_complete_looking_checkpoint(self):
        path = self.save(3)

        def killed_rmtree(path, ignore_errors=False):
            (Path(path) / "model.safetensors").unlink()
            raise KeyboardInterrupt

        with mock.patch.object(checkpoints.shutil, "rmtree", killed_rmtree), self.assertRaises(KeyboardInterrupt):
            checkpoints.remove_checkpoint(path)
        self.assertIn(COMPLETE_MARKER, checkpoints.incompleteness(path))


class GlobalBatchSamplerTest(unittest.TestCase):
    LENGTHS = [(7 * i) % 29 + 1 for i in range(70)]  # 70 examples of varied lengths

    def sampler(self, world: int = 1, accumulation: int = 1, strategy: str = "group_by_length",
                global_batch: int = 16) -> checkpoints.GlobalBatchSampler:
        return checkpoints.GlobalBatchSampler(len(self.LENGTHS), global_batch=global_batch, world=world,
                                              accumulation=accumulation, seed=42, strategy=strategy,
                                              lengths=self.LENGTHS)

    @staticmethod
    def steps(sampler: checkpoints.GlobalBatchSampler) -> list[list[int]]:
        """The examples of each optimizer step, all ranks and micro-batches together, in yield order."""
        micro = list(sampler)
        parts = sampler.world * sampler.accumulation
        return [sum(micro[i : i + parts], []) for i in range(0, len(micro), parts)]

    def test_order_depends_only_on_seed_and_epoch(self):
        for strategy in ("group_by_length", "random"):
            sampler = self.sampler(strategy=strategy)
            first = list(sampler)
            torch.manual_seed(0)  # the global RNG plays no part
            self.assertEqual(list(sampler), first)
            sampler.set_epoch(1)
            second = list(sampler)
            self.assertNotEqual(second, first)
            fresh = self.sampler(strategy=strategy)
            fresh.set_epoch(1)  # a resumed run that starts in epoch 1
            self.assertEqual(list(fresh), second)

    def test_every_world_size_takes_the_same_examples_per_step(self):
        one = self.steps(self.sampler())
        self.assertEqual(len(one), 5)  # 4 full steps of 16 and one of 6
        self.assertEqual(sorted(sum(one, [])), list(range(70)))
        for world, accumulation in ((2, 1), (4, 1), (2, 2), (1, 4)):
            with self.subTest(world=world, accumulation=accumulation):
                many = self.sampler(world, accumulation)
                self.assertEqual(len(many), len(list(many)))
                self.assertEqual([sorted(step) for step in self.steps(many)], [sorted(step) for step in one])

    def test_rank_r_gets_its_contiguous_share_of_each_step(self):
        micro = list(self.sampler(world=2, accumulation=2))  # per step: (r0, a0), (r1, a0), (r0, a1), (r1, a1)
        first_step = self.steps(self.sampler())[0]
        # accelerate's BatchSamplerShard hands batch i to rank i % 2: rank 0 the step's first 8 examples
        self.assertEqual(micro[0] + micro[2], first_step[:8])
        self.assertEqual(micro[1] + micro[3], first_step[8:])

    def test_a_tail_too_small_for_every_micro_batch_is_dropped(self):
        sampler = self.sampler(world=2, accumulation=4)  # 8 micro-batches per step; the last 6 examples cannot fill
        self.assertEqual(len(self.steps(sampler)), 4)
        self.assertEqual(len(sampler), 4 * 8)
        self.assertEqual(len(list(sampler)), len(sampler))


if __name__ == "__main__":
    unittest.main()
