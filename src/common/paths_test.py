import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from src.common import paths

ENV_VARS = (paths.OUTPUT_DIR_ENV, paths.BAZEL_TEST_OUTPUTS_ENV, paths.BAZEL_WORKING_DIR_ENV)


class Unserializable:
    pass


class DefaultOutputDirTest(unittest.TestCase):
    def env(self, **values):
        """os.environ without the three variables, plus `values`."""
        clean = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        return mock.patch.dict(os.environ, clean | values, clear=True)

    def test_resolution_order(self):
        everything = {
            paths.OUTPUT_DIR_ENV: "/explicit",
            paths.BAZEL_TEST_OUTPUTS_ENV: "/bazel-test-out",
            paths.BAZEL_WORKING_DIR_ENV: "/home/me/repo",
        }
        with self.env(**everything):
            self.assertEqual(paths.default_output_dir("job"), Path("/explicit"))
        del everything[paths.OUTPUT_DIR_ENV]
        with self.env(**everything):
            self.assertEqual(paths.default_output_dir("job"), Path("/bazel-test-out"))
        del everything[paths.BAZEL_TEST_OUTPUTS_ENV]
        with self.env(**everything):
            self.assertEqual(paths.default_output_dir("job"), Path("/home/me/repo/outputs/job"))
        with self.env():
            self.assertEqual(paths.default_output_dir("job"), Path.cwd() / "outputs" / "job")

    def test_empty_variables_are_ignored(self):
        with self.env(**{paths.OUTPUT_DIR_ENV: "", paths.BAZEL_WORKING_DIR_ENV: "/w"}):
            self.assertEqual(paths.default_output_dir("job"), Path("/w/outputs/job"))

    def test_user_paths_are_relative_to_the_bazel_working_directory(self):
        with self.env(**{paths.BAZEL_WORKING_DIR_ENV: "/home/me/repo"}):
            self.assertEqual(paths.resolve_user_path("data/x"), Path("/home/me/repo/data/x"))
            self.assertEqual(paths.resolve_user_path("/abs/x"), Path("/abs/x"))
        with self.env():
            self.assertEqual(paths.resolve_user_path("x"), Path.cwd() / "x")


class AtomicWriteTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def test_write_json_creates_parents_and_replaces(self):
        target = self.dir / "sub" / "metrics.json"
        paths.atomic_write_json(target, {"a": 1})
        paths.atomic_write_json(target, {"a": 2})
        self.assertEqual(json.loads(target.read_text()), {"a": 2})
        self.assertEqual(os.listdir(target.parent), ["metrics.json"])

    def test_failed_json_write_keeps_the_old_file(self):
        target = self.dir / "metrics.json"
        paths.atomic_write_json(target, {"old": True})
        with self.assertRaises(TypeError):
            paths.atomic_write_json(target, {"new": Unserializable()})
        self.assertEqual(json.loads(target.read_text()), {"old": True})
        self.assertEqual(os.listdir(self.dir), ["metrics.json"])  # no temp file left behind

    def test_atomic_dir_replaces_only_when_complete(self):
        target = self.dir / "model"
        with paths.atomic_dir(target) as staging:
            (staging / "weights").write_text("v1")
            self.assertFalse(target.exists())  # nothing visible until the block succeeds
        self.assertEqual((target / "weights").read_text(), "v1")

        with self.assertRaises(RuntimeError):
            with paths.atomic_dir(target) as staging:
                (staging / "weights").write_text("half-written v2")
                raise RuntimeError("crash while saving")
        self.assertEqual((target / "weights").read_text(), "v1")
        self.assertEqual(os.listdir(self.dir), ["model"])

        with paths.atomic_dir(target) as staging:
            (staging / "weights").write_text("v2")
        self.assertEqual(os.listdir(target), ["weights"])
        self.assertEqual((target / "weights").read_text(), "v2")
        self.assertEqual(os.listdir(self.dir), ["model"])


if __name__ == "__main__":
    unittest.main()
