"""The committed tiny Llama GGUF: written byte for byte by tiny_llama_gguf.py, shaped like stories260K, with the
llama2.c metadata quirk that the importer repairs, and a tokenizer that covers the shipped instruction set."""

import hashlib
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.common import tiny_llama_gguf
from src.common.errors import EXIT_USAGE
from src.common.gguf_import import import_gguf, invalid_token_id_keys
from src.common.testing import run_cli_captured

BROKEN_KEYS = ["tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id"]  # gguf's spelling


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TinyLlamaGgufTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp)
        self.committed = tiny_llama_gguf.COMMITTED

    def test_the_committed_file_is_what_the_generator_writes(self):
        fresh = tiny_llama_gguf.write(self.tmp / "fresh.gguf")
        self.assertEqual(
            sha256(fresh), sha256(self.committed),
            "src/common/testdata/tiny_llama.gguf is stale: run bazel run //src/common:make_tiny_llama_gguf",
        )

    def test_the_program_takes_no_arguments(self):
        code, stdout, stderr = run_cli_captured(tiny_llama_gguf.main, ["--out", str(self.tmp / "x.gguf")])
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
        self.assertIn("takes no arguments", stderr)
        self.assertEqual(list(self.tmp.iterdir()), [])

    def test_has_the_broken_special_token_ids_of_llama2c_exports(self):
        self.assertEqual(sorted(invalid_token_id_keys(GGUFReader(self.committed))), BROKEN_KEYS)
        with self.assertRaises(IndexError):  # what transformers does with them, unrepaired
            AutoTokenizer.from_pretrained(self.committed.parent, gguf_file=self.committed.name)

    def test_imports_to_a_stories260k_shaped_model_whose_tokenizer_covers_the_data(self):
        entry = import_gguf(self.committed, self.tmp / "store")
        model = AutoModelForCausalLM.from_pretrained(entry)
        tokenizer = AutoTokenizer.from_pretrained(entry)
        self.assertEqual(sum(p.numel() for p in model.parameters()), 292_800)
        self.assertEqual(model.config.vocab_size, 512)
        self.assertIsNone(model.config.pad_token_id)
        text = tiny_llama_gguf.corpus_texts()[0]
        ids = tokenizer(text)["input_ids"]
        self.assertEqual(tokenizer.decode(ids, skip_special_tokens=True), text)  # round trip, no <unk>
        self.assertLess(len(ids), len(text) / 2, "the learned pieces should merge most characters")
        logits = model(torch.tensor([ids])).logits
        self.assertEqual(logits.shape, (1, len(ids), 512))


if __name__ == "__main__":
    unittest.main()
