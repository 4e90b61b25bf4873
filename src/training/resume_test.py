"""Checkpoints, --resume and the run's readable outputs, end to end through the real entry point on a tiny BERT.

One uninterrupted run, and one run that is interrupted right after its first checkpoint (like Ctrl-C) and then
continued with --resume past two planted incomplete checkpoints: both must end with the same weights and metrics.
"""

import functools
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from src.common.checkpoints import COMPLETE_MARKER, ResumableTrainer, incompleteness, list_checkpoints
from src.common.errors import EXIT_INTERRUPTED, EXIT_USAGE
from src.common.paths import BAZEL_TEST_OUTPUTS_ENV
from src.common.testing import make_tiny_bert, run_cli_captured, synthetic_sentiment_rows, write_sst2_folder
from src.training import train_model
from src.training.config import CHECKPOINTS_SUBDIR

STEPS_PER_EPOCH, EPOCHS = 8, 4  # 64 examples, 8 per step
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
CHECKPOINT_EVERY = 10  # the first checkpoint is in the middle of the second epoch
CHECKPOINT_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


run_main = functools.partial(run_cli_captured, train_model.main)  # -> (exit code, stdout, stderr)


class InterruptAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C arrived just after the checkpoint was saved


class InterruptedTrainer(ResumableTrainer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_callback(InterruptAfterFirstCheckpoint())


def plant_incomplete_checkpoints(checkpoint_dir: Path, source: Path) -> None:
    """Newer checkpoints a killed save could have left: one without its marker (the kill came while the marker
    was being written, so its temp file is still there), one whose marker lists a file that was cut short."""
    unmarked = shutil.copytree(source, checkpoint_dir / "checkpoint-20")  # the resumed run saves step 20 again
    (unmarked / COMPLETE_MARKER).rename(unmarked / f".{COMPLETE_MARKER}.tmp-1234-abcd")
    truncated = shutil.copytree(source, checkpoint_dir / "checkpoint-15")
    with open(truncated / "optimizer.pt", "r+b") as f:
        f.truncate(100)


class ResumeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        base = os.environ.get(BAZEL_TEST_OUTPUTS_ENV)
        cls.dir = Path(tempfile.mkdtemp(prefix="resume_test-", dir=base))
        if not base:
            cls.addClassCleanup(shutil.rmtree, cls.dir)
        model_dir = make_tiny_bert(cls.dir / "tiny-bert")
        data_dir = write_sst2_folder(
            cls.dir / "data", train=synthetic_sentiment_rows(64, seed=0), dev=synthetic_sentiment_rows(32, seed=1)
        )
        cls.argv = [
            "--model", str(model_dir),
            "--data", str(data_dir),
            "--max_length", "32",
            "--disable_tqdm", "true",
            "--num_train_epochs", str(EPOCHS),
            "--per_device_train_batch_size", "8",
            "--learning_rate", "1e-2",
            "--logging_steps", "2",
            "--checkpoint_every", str(CHECKPOINT_EVERY),
        ]  # fmt: skip

        cls.full_dir = cls.dir / "uninterrupted"
        cls.full = run_main(cls.argv + ["--output_dir", str(cls.full_dir)])

        cls.resumed_dir = cls.dir / "interrupted"
        with mock.patch.object(train_model, "ResumableTrainer", InterruptedTrainer):
            cls.interrupted = run_main(cls.argv + ["--output_dir", str(cls.resumed_dir)])
        checkpoint_dir = cls.resumed_dir / CHECKPOINTS_SUBDIR
        cls.left_by_interrupted = [c.step for c in list_checkpoints(checkpoint_dir)]
        plant_incomplete_checkpoints(checkpoint_dir, checkpoint_dir / f"checkpoint-{CHECKPOINT_EVERY}")
        cls.resumed = run_main(cls.argv + ["--output_dir", str(cls.resumed_dir), "--resume"])

    def report(self, output_dir: Path) -> dict:
        return json.loads((output_dir / train_model.METRICS_FILE).read_text())

    def eval_history(self, output_dir: Path) -> list[dict]:
        return json.loads((output_dir / train_model.EVAL_HISTORY_FILE).read_text())

    def test_runs_succeed(self):
        self.assertEqual(self.full[0], 0, self.full[2])
        self.assertEqual(self.interrupted[0], EXIT_INTERRUPTED, self.interrupted[2])
        self.assertEqual(self.left_by_interrupted, [CHECKPOINT_EVERY])
        self.assertEqual(self.resumed[0], 0, self.resumed[2])

    def test_checkpoints_are_complete_and_only_the_newest_are_kept(self):
        checkpoints = list_checkpoints(self.full_dir / CHECKPOINTS_SUBDIR)
        self.assertEqual([c.step for c in checkpoints], [30, TOTAL_STEPS])  # every 10 steps and at the end; limit 2
        for checkpoint in checkpoints:
            self.assertIsNone(incompleteness(checkpoint.path))
            marker = json.loads((checkpoint.path / COMPLETE_MARKER).read_text())
            self.assertEqual(marker["step"], checkpoint.step)
            self.assertLessEqual(CHECKPOINT_FILES, set(marker["files"]))
        self.assertEqual(self.report(self.full_dir)["latest_checkpoint"], str(checkpoints[-1].path))

    def test_resume_skips_incomplete_checkpoints(self):
        stderr = self.resumed[2]
        for step in (20, 15):
            self.assertRegex(stderr, rf"ignoring incomplete checkpoint \S+/checkpoint-{step}: ")
        train = self.report(self.resumed_dir)["train"]
        self.assertTrue(train["resumed_from"].endswith(f"checkpoint-{CHECKPOINT_EVERY}"), train["resumed_from"])
        self.assertEqual(train["steps_this_run"], TOTAL_STEPS - CHECKPOINT_EVERY)
        # The planted ones were replaced or removed as soon as the resumed run saved a complete checkpoint.
        checkpoints = list_checkpoints(self.resumed_dir / CHECKPOINTS_SUBDIR)
        self.assertEqual([c.step for c in checkpoints], [30, TOTAL_STEPS])
        self.assertTrue(all(incompleteness(c.path) is None for c in checkpoints))

    def test_resumed_run_matches_the_uninterrupted_one(self):
        full, resumed = self.report(self.full_dir), self.report(self.resumed_dir)
        self.assertEqual(resumed["after"]["metrics"], full["after"]["metrics"])
        self.assertAlmostEqual(resumed["after"]["loss"], full["after"]["loss"], places=5)
        self.assertGreater(full["after"]["metrics"]["accuracy"], full["before"]["metrics"]["accuracy"])  # it learned
        full_weights = load_file(self.full_dir / train_model.MODEL_SUBDIR / "model.safetensors")
        resumed_weights = load_file(self.resumed_dir / train_model.MODEL_SUBDIR / "model.safetensors")
        self.assertEqual(full_weights.keys(), resumed_weights.keys())
        for name, weight in full_weights.items():
            torch.testing.assert_close(resumed_weights[name], weight, rtol=1e-5, atol=1e-6, msg=name)

        def curve(history: list[dict]) -> list[tuple]:
            return [(e["stage"], e["step"], e["accuracy"], round(e["loss"], 5)) for e in history]

        self.assertEqual(curve(self.eval_history(self.resumed_dir)), curve(self.eval_history(self.full_dir)))

    def test_eval_history_has_every_evaluation(self):
        history = self.eval_history(self.full_dir)
        during = [("during", STEPS_PER_EPOCH * epoch, float(epoch)) for epoch in range(1, EPOCHS + 1)]
        expected = [("before", 0, 0.0), *during, ("after", TOTAL_STEPS, float(EPOCHS))]
        self.assertEqual([(e["stage"], e["step"], e["epoch"]) for e in history], expected)
        for entry in history:
            self.assertLessEqual({"loss", "accuracy", "precision", "recall", "f1", "runtime"}, set(entry))

    def test_plot_and_summary(self):
        png = (self.full_dir / train_model.PLOT_FILE).read_bytes()
        self.assertTrue(png.startswith(PNG_MAGIC))
        self.assertGreater(len(png), 10_000)
        stdout = self.full[1]
        for path in (train_model.PLOT_FILE, train_model.EVAL_HISTORY_FILE):
            self.assertIn(str(self.full_dir / path), stdout)
        for fragment in ("examples/s", "s wall", "peak RSS"):
            self.assertIn(fragment, stdout)
        self.assertIn("resumed    from", self.resumed[1])


class ResumeUsageErrorTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def assertUsageError(self, argv: list[str], fragment: str) -> None:
        code, stdout, stderr = run_main(argv)
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(stdout, "")
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(fragment, lines[0])

    def test_resume_without_a_checkpoint(self):
        out = self.dir / "out"
        self.assertUsageError(["--resume", "--output_dir", str(out)], "--resume: no complete checkpoint in")
        self.assertFalse(out.exists())

    def test_fresh_run_over_the_checkpoints_of_an_earlier_run(self):
        old = self.dir / "out" / CHECKPOINTS_SUBDIR / "checkpoint-7"
        old.mkdir(parents=True)
        argv = ["--checkpoint_every", "5", "--output_dir", str(self.dir / "out")]
        self.assertUsageError(argv, "pass --resume to continue it")
        self.assertEqual(os.listdir(old.parent), ["checkpoint-7"])


if __name__ == "__main__":
    unittest.main()
