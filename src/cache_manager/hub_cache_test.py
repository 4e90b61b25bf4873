"""Tests against a fake hub cache laid out exactly as huggingface_hub writes it (built only in this fixture)."""

import hashlib
import os
import shutil
import tempfile
import unittest
from collections.abc import Mapping, Sequence
from pathlib import Path
from unittest import mock

from huggingface_hub import constants

from src.cache_manager import hub_cache
from src.cache_manager.store import model_revision
from src.common.errors import UserError
from src.common.models import resolve_model_source

REPO = "acme/tiny-classifier"
COMMIT_MAIN = "a" * 40
COMMIT_OLD = "b" * 40


def add_cached_snapshot(
    cache: Path, repo_id: str, commit: str, files: Mapping[str, bytes], refs: Sequence[str] = (), mtime: float = 0.0
) -> None:
    """Lay out one snapshot as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/<ref>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        os.utime(blob, (mtime, mtime))
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


class FakeHubCacheTestCase(unittest.TestCase):
    def setUp(self):
        self.home = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.home)
        self.cache = self.home / "hub"
        # huggingface_hub reads HF_HOME/HF_HUB_CACHE/HF_HUB_OFFLINE into constants at import time, so the
        # constants are patched along with the environment.
        for patcher in (
            mock.patch.dict(
                os.environ, {"HF_HOME": str(self.home), "HF_HUB_CACHE": str(self.cache), "HF_HUB_OFFLINE": "1"}
            ),
            mock.patch.object(constants, "HF_HOME", str(self.home)),
            mock.patch.object(constants, "HF_HUB_CACHE", str(self.cache)),
            mock.patch.object(constants, "HF_HUB_OFFLINE", True),
        ):
            patcher.start()
            self.addCleanup(patcher.stop)

    def populate(self) -> None:
        add_cached_snapshot(self.cache, REPO, COMMIT_OLD, {"config.json": b'{"v": 1}'}, mtime=1_000_000)
        newer_files = {"config.json": b'{"v": 2}', "model.safetensors": b"w" * 100}
        add_cached_snapshot(self.cache, REPO, COMMIT_MAIN, newer_files, refs=["main"], mtime=2_000_000)
        add_cached_snapshot(self.cache, "other/model", "c" * 40, {"config.json": b"{}"}, refs=["main"])


class EmptyCacheTest(FakeHubCacheTestCase):
    def test_missing_cache_dir_is_empty_not_an_error(self):
        self.assertFalse(self.cache.exists())
        self.assertEqual(hub_cache.cached_repos(), [])
        self.assertEqual(hub_cache.cached_revisions(REPO), [])
        self.assertFalse(hub_cache.is_cached(REPO))
        self.assertIsNone(hub_cache.resolve_cached_revision(REPO))

    def test_cache_location_follows_the_configuration(self):
        self.assertEqual(hub_cache.cache_location(), {"HF_HOME": str(self.home), "HF_HUB_CACHE": str(self.cache)})

    def test_uncached_hub_model_offline_is_one_actionable_line(self):
        with self.assertRaises(UserError) as ctx:
            resolve_model_source(REPO)
        message = str(ctx.exception)
        self.assertIn(str(self.cache), message)
        self.assertIn("network access", message)
        self.assertIn("local model directory", message)


class PopulatedCacheTest(FakeHubCacheTestCase):
    def setUp(self):
        super().setUp()
        self.populate()

    def test_repos_and_revisions(self):
        self.assertEqual([r.repo_id for r in hub_cache.cached_repos()], [REPO, "other/model"])
        revisions = hub_cache.cached_revisions(REPO)
        self.assertEqual([r.commit_hash for r in revisions], [COMMIT_MAIN, COMMIT_OLD])  # newest first
        self.assertEqual(revisions[0].refs, frozenset({"main"}))

    def test_is_cached_by_ref_or_hash_prefix(self):
        self.assertTrue(hub_cache.is_cached(REPO))
        self.assertTrue(hub_cache.is_cached(REPO, "main"))
        self.assertTrue(hub_cache.is_cached(REPO, COMMIT_OLD[:7]))
        self.assertFalse(hub_cache.is_cached(REPO, "dev"))
        self.assertFalse(hub_cache.is_cached("acme/absent"))
        self.assertEqual(hub_cache.resolve_cached_revision(REPO), COMMIT_MAIN)
        self.assertEqual(hub_cache.resolve_cached_revision(REPO, COMMIT_OLD[:10]), COMMIT_OLD)

    def test_cached_hub_model_resolves_offline_with_its_commit_as_revision(self):
        self.assertEqual(resolve_model_source(REPO), REPO)
        self.assertEqual(model_revision(REPO), COMMIT_MAIN)


if __name__ == "__main__":
    unittest.main()
