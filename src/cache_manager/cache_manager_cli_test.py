"""Tests of the cache manager CLI; the benchmark runs end to end on a tiny random BERT."""

import functools
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from huggingface_hub import constants

from src.cache_manager import cache_manager
from src.cache_manager.store import STORE_ENV, FinetunedModelStore
from src.common.errors import EXIT_USAGE
from src.common.paths import BAZEL_TEST_OUTPUTS_ENV
from src.common.testing import (
    make_tiny_bert,
    run_cli_captured,
    tiny_llama_gguf,
    synthetic_sentiment_rows,
    write_sst2_folder,
)


run_main = functools.partial(run_cli_captured, cache_manager.main)  # -> (exit code, stdout, stderr)


class CacheManagerTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        base = os.environ.get(BAZEL_TEST_OUTPUTS_ENV)
        cls.dir = Path(tempfile.mkdtemp(prefix="cache_manager_cli_test-", dir=base))
        if not base:
            cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.model_dir = make_tiny_bert(cls.dir / "tiny-bert")
        cls.data_dir = write_sst2_folder(
            cls.dir / "data", train=synthetic_sentiment_rows(64), dev=synthetic_sentiment_rows(16, seed=1)
        )

    def setUp(self):
        # An empty, offline hub cache and a store of our own: nothing outside the test dir is read or written.
        hf_home = self.dir / f"hf-home-{self.id().rsplit('.', 1)[-1]}"
        for patcher in (
            mock.patch.dict(os.environ, {STORE_ENV: str(hf_home / "store")}),
            mock.patch.object(constants, "HF_HOME", str(hf_home)),
            mock.patch.object(constants, "HF_HUB_CACHE", str(hf_home / "hub")),
            mock.patch.object(constants, "HF_HUB_OFFLINE", True),
        ):
            patcher.start()
            self.addCleanup(patcher.stop)
        self.hf_home = hf_home

    def benchmark(self, out: Path, *extra: str) -> dict:
        code, stdout, stderr = run_main(
            ["benchmark", "--model", str(self.model_dir), "--data", str(self.data_dir), "--finetune_steps", "3",
             "--output_dir", str(out), *extra]
        )  # fmt: skip
        self.assertEqual(code, 0, stderr)
        self.assertIn("speedup", stdout)
        return json.loads((out / cache_manager.BENCHMARK_FILE).read_text())


class BenchmarkTest(CacheManagerTestCase):
    def test_benchmark_end_to_end_with_a_fresh_store(self):
        result = self.benchmark(self.dir / "bench")
        base, finetuned = result["rows"]
        self.assertEqual(base["first"], "first load in process")
        self.assertTrue(finetuned["first"].startswith("store miss: fine-tune 3 steps"))
        self.assertEqual(finetuned["second"], "store hit + load")
        for row in (base, finetuned):
            self.assertGreater(row["first_s"], 0)
            self.assertGreater(row["second_s"], 0)
            self.assertAlmostEqual(row["speedup"], row["first_s"] / row["second_s"])
        self.assertEqual(result["store"], "(temporary)")
        self.assertFalse((self.hf_home / "store").exists())  # the default store was not touched

    def test_persistent_store_is_a_hit_the_second_time(self):
        store_dir = self.dir / "persistent-store"
        self.benchmark(self.dir / "bench1", "--store", str(store_dir))
        self.assertEqual(len(FinetunedModelStore(store_dir).list()), 1)
        result = self.benchmark(self.dir / "bench2", "--store", str(store_dir))
        self.assertEqual(result["rows"][1]["first"], "store hit + load")
        self.assertEqual(len(FinetunedModelStore(store_dir).list()), 1)

        code, stdout, _ = run_main(["list", "--store", str(store_dir)])
        self.assertEqual(code, 0)
        self.assertIn(str(self.model_dir), stdout)


class InspectCommandsTest(CacheManagerTestCase):
    def test_where(self):
        code, stdout, _ = run_main(["where"])
        self.assertEqual(code, 0)
        self.assertIn(f"HF_HUB_CACHE       {self.hf_home / 'hub'}", stdout)
        self.assertIn(str(self.hf_home / "store"), stdout)

    def test_status_of_local_and_uncached_hub_models(self):
        code, stdout, _ = run_main(["status", str(self.model_dir)])
        self.assertEqual(code, 0)
        self.assertIn("content revision sha256:", stdout)
        code, stdout, _ = run_main(["status", "acme/not-downloaded", "--revision", "main"])
        self.assertEqual(code, cache_manager.EXIT_NOT_CACHED)
        self.assertIn("not cached at revision main", stdout)

    def test_list_of_empty_caches(self):
        code, stdout, _ = run_main(["list"])
        self.assertEqual(code, 0)
        self.assertEqual(stdout.count("(empty)"), 3)

    def test_import_gguf_once_then_listed(self):
        gguf = str(tiny_llama_gguf())
        code, stdout, stderr = run_main(["import-gguf", gguf])
        self.assertEqual(code, 0, stderr)
        self.assertIn("tiny_llama.gguf: imported at", stdout)
        entry = next((self.hf_home / "cpu-finetune" / "gguf").iterdir())
        mtime = entry.stat().st_mtime_ns
        code, stdout, stderr = run_main(["import-gguf", gguf])  # the second request finds the import
        self.assertEqual(code, 0, stderr)
        self.assertEqual(entry.stat().st_mtime_ns, mtime)
        code, stdout, _ = run_main(["list"])
        self.assertIn(f"{entry.name[:12]}  tiny_llama.gguf", stdout)
        code, _, stderr = run_main(["import-gguf", str(self.model_dir)])
        self.assertEqual(code, EXIT_USAGE)
        self.assertIn("is not a GGUF file", stderr)

    def test_usage_errors_are_one_line_exit_2(self):
        for argv, fragment in (
            (["frobnicate"], "unknown command 'frobnicate'"),
            (["benchmark", "--finetune_steps", "0"], "--finetune_steps must be >= 1"),
            (["--model", "builtin:nope"], "unknown builtin model"),
            (["status"], "required: model"),
        ):
            with self.subTest(argv=argv):
                code, stdout, stderr = run_main(argv)
                self.assertEqual(code, EXIT_USAGE)
                self.assertEqual(len(stderr.splitlines()), 1, stderr)
                self.assertIn(fragment, stderr)


if __name__ == "__main__":
    unittest.main()
