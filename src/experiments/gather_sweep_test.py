"""gather_sweep on fixture metrics files (testdata/): the table's rows and columns, the best run, bad input."""

import json
import shutil
import tempfile
import unittest
from pathlib import Path

from src.common.errors import EXIT_USAGE
from src.common.testing import run_cli_captured
from src.experiments import gather_sweep

TESTDATA = Path(__file__).parent / "testdata"
CONFIGS = ("lr_5e-5", "lr_2e-4", "lr_1e-3")


class GatherSweepTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="gather_sweep_test-"))
        self.addCleanup(shutil.rmtree, self.dir)
        self.markdown, self.json = self.dir / "table.md", self.dir / "table.json"

    def gather(self, *runs: str) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of gather_sweep with these --run specs."""
        argv = [f"--run={run}" for run in runs] + ["--markdown", str(self.markdown), "--json", str(self.json)]
        return run_cli_captured(gather_sweep.main, argv)

    def fixture_runs(self) -> list[str]:
        return [f"{name}={TESTDATA / f'metrics_{name}.json'}" for name in CONFIGS]

    def test_table_has_one_row_per_run_with_the_varied_settings(self):
        code, stdout, _ = self.gather(*self.fixture_runs())
        self.assertEqual(code, 0)
        lines = self.markdown.read_text(encoding="utf-8").splitlines()
        self.assertEqual(stdout.splitlines(), lines)
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        self.assertEqual(
            header,
            ["config", "learning_rate", "accuracy before", "accuracy after", "f1 after", "loss after", "steps",
             "train s", "examples/s", "job wall s"],
        )
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:5]]
        self.assertEqual([row[0] for row in rows], ["lr_5e-5", "**lr_2e-4** (best)", "lr_1e-3"])
        self.assertEqual(rows[0][1:], ["5e-05", "0.4500", "0.6125", "0.6801", "0.6512", "16", "15.2", "67.4", "17.0"])
        self.assertIn("3 runs; summed train time 45.6 s, summed job wall time 50.8 s", lines[6])

    def test_json_matches_the_table(self):
        self.assertEqual(self.gather(*self.fixture_runs())[0], 0)
        table = json.loads(self.json.read_text(encoding="utf-8"))
        self.assertEqual(table["varied"], ["learning_rate"])
        # lr_2e-4 and lr_1e-3 tie on accuracy; the lower loss wins.
        self.assertEqual(table["best"], "lr_2e-4")
        self.assertEqual([run["name"] for run in table["runs"]], list(CONFIGS))
        self.assertEqual(table["runs"][2]["accuracy_after"], 0.9312)
        self.assertEqual(table["runs"][2]["wall_seconds"], 17.3)

    def test_a_single_run_has_no_varied_settings(self):
        self.assertEqual(self.gather(self.fixture_runs()[0])[0], 0)
        self.assertEqual(json.loads(self.json.read_text(encoding="utf-8"))["varied"], [])

    def test_bad_input_is_one_line_and_exit_2(self):
        broken = self.dir / "broken.json"
        broken.write_text('{"after": {}}', encoding="utf-8")
        cases = {
            "no-equals-sign": "must be NAME=METRICS_JSON",
            f"a={self.dir / 'missing.json'}": "cannot read metrics file",
            f"a={broken}": "no field 'config'",
        }
        for spec, message in cases.items():
            with self.subTest(spec=spec):
                code, _, stderr = self.gather(spec)
                self.assertEqual(code, EXIT_USAGE)
                self.assertIn(message, stderr)
                self.assertEqual(stderr.count("\n"), 1)
        first = self.fixture_runs()[0]
        code, _, stderr = self.gather(first, first)
        self.assertEqual(code, EXIT_USAGE)
        self.assertIn("repeated: lr_5e-5", stderr)
        self.assertFalse(self.markdown.exists())


if __name__ == "__main__":
    unittest.main()
