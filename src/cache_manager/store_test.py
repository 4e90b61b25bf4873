import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from huggingface_hub import constants

from src.cache_manager import store as store_module
from src.cache_manager.store import FinetunedModelStore, content_revision, default_store_root, key_for, model_revision
from src.common.errors import UserError

TRAINING = {"learning_rate": 1e-4, "num_train_epochs": 3.0, "data": "builtin:sentiment_small", "seed": 42}


def write_fake_model(path: Path, weights: bytes = b"weights-v1") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "bert"}')
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer.json").write_text("{}")
    return path


class StoreTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.store = FinetunedModelStore(self.dir / "store")
        self.key = key_for("builtin:all-MiniLM-L6-v2", "sha256:abc", TRAINING)

    def leftovers(self) -> list[str]:
        """Names in the store root that are not complete entries (temp dirs of failed writes)."""
        return [p.name for p in self.store.root.iterdir() if p.name.startswith(".")] if self.store.root.exists() else []


class KeyTest(StoreTestCase):
    def test_stable_and_order_independent(self):
        reordered = dict(reversed(list(TRAINING.items())))
        self.assertEqual(self.key, key_for("builtin:all-MiniLM-L6-v2", "sha256:abc", reordered))
        self.assertRegex(self.key, r"^[0-9a-f]{64}$")

    def test_sensitive_to_every_input(self):
        variants = [
            key_for("other/model", "sha256:abc", TRAINING),
            key_for("builtin:all-MiniLM-L6-v2", "sha256:abd", TRAINING),
            key_for("builtin:all-MiniLM-L6-v2", "sha256:abc", TRAINING | {"learning_rate": 2e-4}),
            key_for("builtin:all-MiniLM-L6-v2", "sha256:abc", TRAINING | {"max_train_samples": 100}),
        ]
        self.assertEqual(len({self.key, *variants}), 1 + len(variants))


class RevisionTest(StoreTestCase):
    def test_content_revision_follows_config_and_weights(self):
        a = write_fake_model(self.dir / "a")
        b = write_fake_model(self.dir / "b")
        c = write_fake_model(self.dir / "c", weights=b"weights-v2")
        self.assertEqual(content_revision(a), content_revision(b))
        self.assertNotEqual(content_revision(a), content_revision(c))
        (b / "config.json").write_text('{"model_type": "bert", "num_labels": 3}')
        self.assertNotEqual(content_revision(a), content_revision(b))
        (a / "README.md").write_text("docs do not change the revision")
        self.assertEqual(content_revision(a), content_revision(self.dir / "a"))

    def test_model_revision_of_local_dir_is_its_content_hash(self):
        model = write_fake_model(self.dir / "m")
        self.assertEqual(model_revision(str(model)), content_revision(model))


class PutGetTest(StoreTestCase):
    def test_put_then_get(self):
        self.assertIsNone(self.store.get(self.key))
        stored = self.store.put(self.key, write_fake_model(self.dir / "m"), {"base_model": "x"})
        self.assertEqual(self.store.get(self.key), stored)
        self.assertEqual((stored / "model.safetensors").read_bytes(), b"weights-v1")
        metadata = json.loads((stored.parent / store_module.METADATA_FILE).read_text())
        self.assertEqual((metadata["key"], metadata["base_model"]), (self.key, "x"))
        self.assertIn("created", metadata)

    def test_invalid_keys_are_rejected(self):
        for key in ("../escape", "ABC", "a" * 63):
            with self.assertRaises(UserError):
                self.store.get(key)

    def test_failed_put_keeps_the_existing_entry(self):
        self.store.put(self.key, write_fake_model(self.dir / "v1"), {"version": 1})
        v2 = write_fake_model(self.dir / "v2", weights=b"weights-v2")

        def copy_half_then_crash(src, dst, **kwargs):
            Path(dst).mkdir()
            (Path(dst) / "config.json").write_text("partial")
            raise OSError("disk full")

        with mock.patch.object(store_module.shutil, "copytree", copy_half_then_crash):
            with self.assertRaises(OSError):
                self.store.put(self.key, v2, {"version": 2})
        stored = self.store.get(self.key)
        self.assertEqual((stored / "model.safetensors").read_bytes(), b"weights-v1")
        self.assertEqual(json.loads((stored.parent / "metadata.json").read_text())["version"], 1)
        self.assertEqual(self.leftovers(), [])

        self.store.put(self.key, v2, {"version": 2})  # a successful put replaces it
        self.assertEqual((self.store.get(self.key) / "model.safetensors").read_bytes(), b"weights-v2")
        self.assertEqual(self.leftovers(), [])

    def test_put_rejects_a_directory_that_is_not_a_model(self):
        (self.dir / "empty").mkdir()
        with self.assertRaises(ValueError):
            self.store.put(self.key, self.dir / "empty", {})
        self.assertIsNone(self.store.get(self.key))


class GetOrCreateTest(StoreTestCase):
    def test_builds_once_then_loads(self):
        calls = []

        def build():
            calls.append(1)
            return write_fake_model(self.dir / f"build{len(calls)}"), {"base_model": "x"}

        first = self.store.get_or_create(self.key, build)
        second = self.store.get_or_create(self.key, build)
        self.assertEqual(first, second)
        self.assertEqual(len(calls), 1)

    def test_failing_build_leaves_no_entry(self):
        def build():
            raise RuntimeError("training crashed")

        with self.assertRaises(RuntimeError):
            self.store.get_or_create(self.key, build)
        self.assertIsNone(self.store.get(self.key))
        self.assertEqual(self.store.list(), [])
        self.assertEqual(self.leftovers(), [])


class ListRemoveTest(StoreTestCase):
    def test_list_and_remove(self):
        self.assertEqual(self.store.list(), [])
        other = key_for("other/model", "c" * 40, TRAINING)
        self.store.put(self.key, write_fake_model(self.dir / "a"), {"base_model": "a"})
        self.store.put(other, write_fake_model(self.dir / "b"), {"base_model": "b"})
        (self.store.root / ".half-written.tmp-1").mkdir()  # a write in progress is not an entry
        entries = self.store.list()
        self.assertEqual({e.key for e in entries}, {self.key, other})
        self.assertTrue(all(e.size_bytes > 0 for e in entries))
        self.assertTrue(self.store.remove(self.key))
        self.assertFalse(self.store.remove(self.key))
        self.assertEqual([e.key for e in self.store.list()], [other])


class DefaultRootTest(unittest.TestCase):
    def test_env_then_hf_home(self):
        with mock.patch.dict(os.environ, {store_module.STORE_ENV: "/srv/models"}):
            self.assertEqual(default_store_root(), Path("/srv/models"))
        env = {k: v for k, v in os.environ.items() if k != store_module.STORE_ENV}
        with mock.patch.dict(os.environ, env, clear=True), mock.patch.object(constants, "HF_HOME", "/hf-home"):
            self.assertEqual(default_store_root(), Path("/hf-home/cpu-finetune/finetuned"))
            self.assertEqual(FinetunedModelStore().root, Path("/hf-home/cpu-finetune/finetuned"))


if __name__ == "__main__":
    unittest.main()
