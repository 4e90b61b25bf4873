"""GGUF import: broken metadata repaired on a copy, imported once and found by hash, loadable, never half-written."""

import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

from src.common.errors import UserError
from src.common.gguf_import import IMPORT_FILE, file_sha256, import_gguf, invalid_token_id_keys, list_imports
from src.common.testing import tiny_llama_gguf

BROKEN_KEYS = ["tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id"]  # 0xFFFFFFFF, as in llama2.c exports


class GgufImportTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp)
        self.store = self.tmp / "store"
        self.source = tiny_llama_gguf()

    def test_finds_the_out_of_vocabulary_token_ids(self):
        self.assertEqual(sorted(invalid_token_id_keys(GGUFReader(self.source))), sorted(BROKEN_KEYS))

    def test_imports_once_and_leaves_the_source_untouched(self):
        sha_before = file_sha256(self.source)
        entry = import_gguf(self.source, self.store)
        self.assertEqual(entry.name, sha_before)
        self.assertEqual(file_sha256(self.source), sha_before)  # repaired on a private copy only
        record = (entry / IMPORT_FILE).read_text()
        for key in BROKEN_KEYS:
            self.assertIn(key, record)

        model = AutoModelForCausalLM.from_pretrained(entry)
        self.assertIsNone(model.config.pad_token_id)
        self.assertEqual(model.config.vocab_size, 512)
        ids = torch.tensor([[1, 403, 407, 261, 378]])  # <s> and four pieces
        self.assertEqual(model(ids).logits.shape, (1, 5, 512))

        mtime = (entry / IMPORT_FILE).stat().st_mtime_ns
        self.assertEqual(import_gguf(self.source, self.store), entry)  # found by hash, not imported again
        self.assertEqual((entry / IMPORT_FILE).stat().st_mtime_ns, mtime)
        self.assertEqual(list_imports(self.store), [entry])

    def test_a_failed_import_leaves_no_entry(self):
        truncated = self.tmp / "truncated.gguf"
        truncated.write_bytes(self.source.read_bytes()[:4096])
        with self.assertRaises(Exception):
            import_gguf(truncated, self.store)
        self.assertEqual(list_imports(self.store), [])
        self.assertEqual([p.name for p in self.store.iterdir() if not p.name.startswith(".")], [])

    def test_rejects_a_file_that_is_not_gguf(self):
        fake = self.tmp / "model.gguf"
        fake.write_text("not a model")
        with self.assertRaisesRegex(UserError, r"is not a GGUF file"):
            import_gguf(fake, self.store)


if __name__ == "__main__":
    unittest.main()
