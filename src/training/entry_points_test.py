"""The entry points start fast: each restarts onto tcmalloc (where installed) before its heavy imports, so a run
imports torch, transformers and peft once, not twice."""

import os
import re
import subprocess
import sys
import unittest

from src.common import allocator

ENTRY_POINTS = (
    "src.training.train_model",
    "src.training.bench_training",
    "src.training.bench_causal_lm",
    "src.training.bench_distributed",
    "src.training.evaluate",
    "src.training.predict",
)


class EntryPointsTest(unittest.TestCase):
    def test_entry_points_restart_before_importing_torch(self):
        """Each entry point's process imports torch once: the process it replaces had not got that far."""
        installed = any(os.path.exists(path) for path in allocator.TCMALLOC_LIBRARIES)
        clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator._PRELOADED_ENV)}
        for module in ENTRY_POINTS:
            with self.subTest(module=module):
                done = subprocess.run(
                    [sys.executable, "-X", "importtime", "-m", module, "--help"],
                    env=clean | {"PYTHONPATH": os.pathsep.join(sys.path)},
                    capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                # -X importtime: one line per module a process imports, "import time: self | cumulative | name".
                torch_imports = re.findall(r"(?m)\|\s+torch$", done.stderr)
                self.assertEqual(len(torch_imports), 1, f"torch imported {len(torch_imports)} times")
                processes = re.findall(r"(?m)\|\s+src\.common\.allocator$", done.stderr)
                self.assertEqual(len(processes), 2 if installed else 1, "one import of allocator per process")


if __name__ == "__main__":
    unittest.main()
