import os
import shutil
import socket
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import datasets
import huggingface_hub
from transformers import AutoTokenizer

from src.common import data
from src.common.errors import UserError
from src.common.models import builtin_model_dir
from src.common.testing import synthetic_sentiment_rows, write_jsonl_folder, write_sst2_folder

QUOTED_ROWS = [
    ('it \'s a "masterpiece" , really', 1),
    ('"quoted at the start', 0),
    ("ends with a quote'", 1),
]


class DataTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)


class BuiltinDataTest(DataTestCase):
    def test_default_builtin_set_loads(self):
        ds = data.load_data(data.DEFAULT_DATA)
        self.assertEqual(set(ds), {"train", "validation"})
        for split in ds.values():
            self.assertEqual(split.column_names, [data.TEXT_COLUMN, data.LABEL_COLUMN])
            self.assertGreater(len(split), 0)
            self.assertLessEqual(set(split[data.LABEL_COLUMN]), {0, 1})
            self.assertIsInstance(split[0][data.TEXT_COLUMN], str)

    def test_unknown_builtin(self):
        with self.assertRaisesRegex(UserError, "sentiment_small"):
            data.load_data("builtin:no_such_set")


class LocalFolderTest(DataTestCase):
    def test_sst2_tsv_folder_keeps_quotes_verbatim(self):
        folder = write_sst2_folder(self.dir / "sst2", train=QUOTED_ROWS, dev=QUOTED_ROWS[:2])
        ds = data.load_data(str(folder))
        self.assertEqual(list(zip(ds["train"]["text"], ds["train"]["label"])), QUOTED_ROWS)
        self.assertEqual(len(ds["validation"]), 2)

    def test_validation_tsv_is_accepted_and_is_the_real_dev_file(self):
        train, dev = synthetic_sentiment_rows(20, seed=1), [("only in dev", 0)]
        folder = write_sst2_folder(self.dir / "d", train=train, dev=dev, dev_name="validation.tsv")
        ds = data.load_data(str(folder))
        self.assertEqual(ds["validation"]["text"], ["only in dev"])
        self.assertEqual(len(ds["train"]), 20)

    def test_jsonl_folder(self):
        folder = write_jsonl_folder(self.dir / "imdb", train=synthetic_sentiment_rows(6), test=[("a fine test", 1)])
        ds = data.load_data(str(folder))
        self.assertEqual(ds["train"].column_names, ["text", "label"])  # `id` is dropped
        self.assertEqual(len(ds["train"]), 6)
        self.assertEqual(ds["validation"]["text"], ["a fine test"])

    def test_missing_folder_names_the_path_and_expected_files(self):
        missing = self.dir / "nope"
        with self.assertRaises(UserError) as ctx:
            data.load_data(str(missing))
        self.assertIn(str(missing), str(ctx.exception))
        self.assertIn("train.tsv", str(ctx.exception))

    def test_folder_without_the_expected_files(self):
        (self.dir / "train.tsv").write_text("sentence\tlabel\nx\t1\n")  # no dev file
        with self.assertRaisesRegex(UserError, "dev.tsv"):
            data.load_data(str(self.dir))

    def test_bad_rows_name_file_and_line(self):
        folder = write_sst2_folder(self.dir / "bad", train=[("fine", 1), ("bad label", 7)], dev=[("x", 0)])
        with self.assertRaisesRegex(UserError, r"train\.tsv:3"):
            data.load_data(str(folder))
        (folder / "train.tsv").write_text("text,label\nx,1\n")
        with self.assertRaisesRegex(UserError, "header"):
            data.load_data(str(folder))


class SubsetTest(DataTestCase):
    def setUp(self):
        super().setUp()
        self.folder = write_sst2_folder(
            self.dir / "d", train=synthetic_sentiment_rows(100), dev=synthetic_sentiment_rows(40, seed=2)
        )

    def test_max_samples_are_seeded_and_deterministic(self):
        a = data.load_data(str(self.folder), max_train_samples=10, max_eval_samples=5, seed=3)
        b = data.load_data(str(self.folder), max_train_samples=10, max_eval_samples=5, seed=3)
        c = data.load_data(str(self.folder), max_train_samples=10, seed=4)
        self.assertEqual((len(a["train"]), len(a["validation"])), (10, 5))
        self.assertEqual(a["train"]["text"], b["train"]["text"])
        self.assertNotEqual(a["train"]["text"], c["train"]["text"])

    def test_train_fraction(self):
        ds = data.load_data(str(self.folder), train_fraction=0.5)
        self.assertEqual(len(ds["train"]), 50)
        self.assertEqual(len(ds["validation"]), 40)
        ds = data.load_data(str(self.folder), train_fraction=0.5, max_train_samples=20)
        self.assertEqual(len(ds["train"]), 20)


class HubDatasetTest(DataTestCase):
    def test_offline_hub_id_gives_one_actionable_line_without_network(self):
        network_calls = []

        def no_network(*args, **kwargs):
            network_calls.append(args)
            raise OSError("network access in a test")

        env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        # The libraries read these variables at import time, so their constants are patched as well.
        with (
            mock.patch.dict(os.environ, env),
            mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
            mock.patch.object(datasets.config, "HF_DATASETS_CACHE", self.dir / "datasets-cache"),
            mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True),
            mock.patch.object(huggingface_hub.constants, "HF_HUB_CACHE", str(self.dir / "hub-cache")),
            mock.patch.object(socket, "getaddrinfo", no_network),
            mock.patch.object(socket.socket, "connect", no_network),
        ):
            with self.assertRaises(UserError) as ctx:
                data.load_data("glue/sst2")
        message = str(ctx.exception)
        self.assertIn("'glue/sst2' is not available offline", message)
        self.assertIn("--data /path/to/sst2", message)
        self.assertNotIn("\n", message)
        self.assertEqual(network_calls, [])

    def test_malformed_id(self):
        with self.assertRaisesRegex(UserError, "neither a folder nor"):
            data.load_data("not a valid id!")


class TokenizeTest(DataTestCase):
    @classmethod
    def setUpClass(cls):
        cls.tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir("all-MiniLM-L6-v2"))

    def test_tokenize_without_padding_and_with_lengths(self):
        rows = [("short", 1), ("a much longer sentence that goes on and on and on", 0)]
        folder = write_sst2_folder(self.dir / "d", train=rows, dev=rows)
        encoded = data.tokenize(data.load_data(str(folder)), self.tokenizer, max_length=8)
        train = encoded["train"]
        self.assertNotIn("text", train.column_names)
        self.assertIn(data.LENGTH_COLUMN, train.column_names)
        self.assertEqual(train[data.LENGTH_COLUMN], [len(ids) for ids in train["input_ids"]])
        self.assertEqual(train[data.LENGTH_COLUMN], [3, 8])  # [CLS] short [SEP]; truncated at 8

        batch = data.PaddingCollator(self.tokenizer)([train[0], train[1]])
        self.assertNotIn(data.LENGTH_COLUMN, batch)
        self.assertEqual(tuple(batch["input_ids"].shape), (2, 8))
        self.assertEqual(batch["labels"].tolist(), [1, 0])


if __name__ == "__main__":
    unittest.main()
