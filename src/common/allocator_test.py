"""The allocator choice and the restart onto tcmalloc."""

import os
import subprocess
import sys
import unittest

from src.common import allocator
from src.common.errors import UserError

class AllocatorTest(unittest.TestCase):
    LIBRARY = allocator.TCMALLOC_LIBRARIES[0]

    def preload(self, env: dict[str, str], installed: bool = True) -> str | None:
        return allocator.allocator_preload(env, exists=lambda path: installed and path == self.LIBRARY)

    def test_preloads_tcmalloc_where_installed_keeping_other_preloads(self):
        self.assertEqual(self.preload({}), self.LIBRARY)
        self.assertEqual(self.preload({"LD_PRELOAD": "libother.so"}), f"{self.LIBRARY} libother.so")
        self.assertIsNone(self.preload({}, installed=False))

    def test_never_twice_and_never_when_opted_out(self):
        self.assertIsNone(self.preload({"LD_PRELOAD": self.LIBRARY}))
        self.assertIsNone(self.preload({allocator._PRELOADED_ENV: "1"}))
        self.assertIsNone(self.preload({allocator.ALLOCATOR_ENV: "system"}))
        with self.assertRaisesRegex(UserError, "CPU_FINETUNE_ALLOCATOR='jemalloc'"):
            self.preload({allocator.ALLOCATOR_ENV: "jemalloc"})

    def restarted(self, **env: str) -> subprocess.CompletedProcess:
        """A fresh interpreter that calls restart_with_fast_allocator() and prints the allocator it then runs on."""
        code = "from src.common import allocator; allocator.restart_with_fast_allocator(); print(allocator.allocator_in_use())"
        clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator._PRELOADED_ENV)}
        full_env = clean | {"PYTHONPATH": os.pathsep.join(sys.path)} | env
        return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)

    def test_a_restarted_process_runs_on_tcmalloc_where_installed(self):
        installed = any(os.path.exists(path) for path in allocator.TCMALLOC_LIBRARIES)
        done = self.restarted()
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "tcmalloc" if installed else "system")
        self.assertEqual(allocator.allocator_in_use(), "system")  # this test process itself was not restarted

    def test_opt_out_and_bad_choice(self):
        done = self.restarted(**{allocator.ALLOCATOR_ENV: "system"})
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "system"), done.stderr)
        done = self.restarted(**{allocator.ALLOCATOR_ENV: "jemalloc"})
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stderr.strip().splitlines(), [
            "error: CPU_FINETUNE_ALLOCATOR='jemalloc': use tcmalloc (the default where installed) or system"])


if __name__ == "__main__":
    unittest.main()
