"""bench_training end to end on a tiny random BERT for a few steps: both modes run and report what they promise.

The numbers themselves are not asserted (timing belongs to the benchmark, not to tests); their presence,
consistency and the output contract are.
"""

import contextlib
import io
import json
import os
import tempfile
import unittest
from pathlib import Path

from src.common.testing import make_tiny_bert, synthetic_sentiment_rows, write_sst2_folder
from src.training import bench_training


class BenchTrainingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(os.environ.get("TEST_TMPDIR") or tempfile.mkdtemp())
        cls.model = make_tiny_bert(cls.tmp / "tiny_bert")
        cls.data = write_sst2_folder(
            cls.tmp / "data", synthetic_sentiment_rows(400, seed=1), synthetic_sentiment_rows(64, seed=2)
        )

    def run_bench(self, *args: str, job: tuple[str, ...] = ()) -> tuple[int, list[str], dict]:
        out_dir = Path(tempfile.mkdtemp(dir=self.tmp))
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = bench_training.main(
                ["--data", str(self.data), "--output_dir", str(out_dir), *args, "--", "--model", str(self.model), *job]
            )
        lines = stdout.getvalue().strip().splitlines()
        return code, lines, json.loads((out_dir / bench_training.RESULT_FILE).read_text())

    def test_throughput_mode_compares_both_recipes(self):
        code, lines, report = self.run_bench("--steps", "8", "--warmup_steps", "2")
        self.assertEqual(code, 0)
        self.assertRegex(lines[-1], r"^speedup_vs_seed: \d+\.\dx$")
        seed, fast = report["seed"], report["default"]
        self.assertEqual(seed["steps_timed"], 6)
        self.assertEqual(fast["steps_timed"], 6)
        self.assertEqual(seed["examples"], 6 * 16)
        self.assertEqual(seed["tokens_executed"], 6 * 16 * 128)  # the seed pads everything to 128
        self.assertLess(fast["tokens_executed"] / fast["examples"], 32)  # dynamic padding: short sentences
        # The seed keeps the model's own dropout (0.1 in the tiny BERT's config) and transformers' SDPA attention.
        self.assertEqual((seed["dropout"], seed["attention"]), ([0.1], "sdpa"))
        self.assertEqual((fast["dropout"], fast["attention"]), ([0.0], "eager"))
        self.assertAlmostEqual(
            report["speedup_vs_seed"], fast["examples_per_second"] / seed["examples_per_second"], places=6
        )
        for precision in ("fp32", "bf16"):
            self.assertGreater(report["roof_gflops"][precision]["roof"], 0)
        self.assertGreater(fast["gflops_per_second"], 0)

    def test_time_to_accuracy_mode_stops_at_the_target(self):
        code, lines, report = self.run_bench(
            "--mode", "time_to_accuracy", "--target_accuracy", "0.01", "--eval_every", "2"
        )
        self.assertEqual(code, 0)
        self.assertTrue(report["reached"])
        self.assertEqual(report["steps"], 2)  # the first evaluation already reaches 1%
        self.assertRegex(lines[-1], r"^time_to_accuracy_s: \d+\.\d$")

    def test_unreachable_target_exits_non_zero(self):
        code, lines, report = self.run_bench(
            "--mode", "time_to_accuracy", "--target_accuracy", "1.0", "--eval_every", "2",
            job=("--max_steps", "4", "--learning_rate", "1e-9"),
        )
        self.assertEqual(code, 1)
        self.assertFalse(report["reached"])
        self.assertEqual(lines[-1], "time_to_accuracy_s: not reached")


if __name__ == "__main__":
    unittest.main()
