import os
import shutil
import socket
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import datasets
import huggingface_hub
import pandas as pd
from transformers import AutoTokenizer

from src.common import data
from src.common.errors import UserError
from src.common.models import builtin_model_dir
from src.common.testing import synthetic_sentiment_rows, write_jsonl_folder, write_sst2_folder

# TSV/CSV as pandas and spreadsheets write them: a quoted field may hold the separator, a newline or "" (a quote).
QUOTED_TSV = 'sentence\tlabel\n"tab\tinside"\t1\n"two\nlines"\t0\nit \'s a ""gem""\t1\n"a ""gem"""\t1\n'
class DataTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)


class BuiltinDataTest(DataTestCase):
    def test_default_builtin_set_loads_with_its_cards_class_names(self):
        ds = data.load_data(data.DEFAULT_DATA)
        self.assertEqual(set(ds.splits), {"train", "validation"})
        self.assertEqual(ds.label_names, data.LABEL_NAMES)  # from the README.md dataset card: ids 0, 1 named
        self.assertFalse(ds.pair)
        for split in ds.splits.values():
            self.assertEqual(split.column_names, [data.TEXT_COLUMN, data.LABEL_COLUMN])
            self.assertEqual(set(split[data.LABEL_COLUMN]), {0, 1})
            self.assertIsInstance(split[0][data.TEXT_COLUMN], str)

    def test_shipped_multiclass_and_pair_sets(self):
        tickets = data.load_data("builtin:support_tickets_small")
        self.assertEqual(tickets.label_names, ("account", "billing", "returns", "shipping", "technical"))  # sorted
        self.assertEqual((len(tickets["train"]), len(tickets["validation"])), (400, 100))
        self.assertTrue(any("\n" in text for text in tickets["train"]["text"]))  # multi-line quoted fields
        pairs = data.load_data("builtin:paraphrase_small")
        self.assertTrue(pairs.pair)
        self.assertEqual(pairs.label_names, ("not_equivalent", "equivalent"))
        self.assertEqual(pairs["train"].column_names, [data.TEXT_COLUMN, data.TEXT_PAIR_COLUMN, data.LABEL_COLUMN])

    def test_unknown_builtin(self):
        with self.assertRaisesRegex(UserError, "sentiment_small"):
            data.load_data("builtin:no_such_set")


ROWS = [("the soup was cold", "food"), ("my card was charged twice", "billing"), ("lovely pasta", "food"),
        ("refund my invoice", "billing"), ("the app crashes", "tech"), ("login fails", "tech")]


def write_folder(folder: Path, suffix: str, train: list[dict], validation: list[dict], **names) -> Path:
    """train.<suffix> and validation.<suffix> holding `rows` (a list of dicts), written with pandas."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation)):
        frame = pd.DataFrame(rows)
        path = folder / f"{names.get(split, split)}{suffix}"
        if suffix in (".csv", ".tsv"):
            frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif suffix == ".json":
            frame.to_json(path, orient="records")
        else:
            frame.to_parquet(path)
    return folder


class FormatsTest(DataTestCase):
    def test_every_format_reads_the_same_examples(self):
        rows = [{"text": t, "label": y, "extra": i} for i, (t, y) in enumerate(ROWS)]
        rows[0]["text"] = 'said "hi", then\nleft'  # a quote, a comma and a newline in one field
        for suffix in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
            with self.subTest(suffix):
                ds = data.load_data(str(write_folder(self.dir / suffix[1:], suffix, rows, rows[:3])))
                self.assertEqual(ds["train"]["text"], [r["text"] for r in rows])
                self.assertEqual(ds.label_names, ("billing", "food", "tech"))
                self.assertEqual(ds["train"]["label"], [1, 0, 1, 0, 2, 2])
                self.assertEqual(ds["train"].column_names, ["text", "label"])  # `extra` dropped

    def test_quoted_tsv_with_tabs_newlines_and_quotes(self):
        folder = self.dir / "q"
        folder.mkdir()
        for name in ("train.tsv", "dev.tsv"):
            (folder / name).write_text(QUOTED_TSV, encoding="utf-8")
        ds = data.load_data(str(folder))
        self.assertEqual(ds["train"]["text"], ["tab\tinside", "two\nlines", 'it \'s a ""gem""', 'a "gem"'])
        self.assertEqual(ds["validation"]["label"], [1, 0, 1, 1])
        self.assertEqual(ds.label_names, ("0", "1"))  # integer labels without a card: named by their ids

    def test_split_names_dev_and_test(self):
        train, dev = synthetic_sentiment_rows(20, seed=1), [("only in dev", 0)]
        folder = write_sst2_folder(self.dir / "d", train=train, dev=dev, dev_name="validation.tsv")
        self.assertEqual(data.load_data(str(folder))["validation"]["text"], ["only in dev"])
        folder = write_jsonl_folder(self.dir / "imdb", train=synthetic_sentiment_rows(6), test=[("a fine test", 1)])
        ds = data.load_data(str(folder))
        self.assertEqual(ds["train"].column_names, ["text", "label"])  # `id` is dropped
        self.assertEqual(ds["validation"]["text"], ["a fine test"])

    def test_integer_labels_named_by_flag_and_classes_without_examples_warned(self):
        rows = [{"text": f"t{i}", "label": i % 3} for i in range(6)]
        folder = write_folder(self.dir / "i", ".jsonl", [r for r in rows if r["label"] != 1], rows)
        with self.assertLogs("src.common.data", "WARNING") as logs:
            ds = data.load_data(str(folder), label_names=["low", "mid", "high"])
        self.assertEqual(ds.label_names, ("low", "mid", "high"))
        self.assertEqual(ds["validation"]["label"], [0, 1, 2, 0, 1, 2])
        self.assertIn("'mid' has no training example", logs.output[0])

    def test_string_label_order_from_flag(self):
        rows = [{"text": t, "label": y} for t, y in ROWS]
        ds = data.load_data(str(write_folder(self.dir / "s", ".csv", rows, rows)), label_names=["tech", "food",
                                                                                                 "billing"])
        self.assertEqual(ds["train"]["label"], [1, 2, 1, 2, 0, 0])

    def test_sentence_pairs_by_default_names_and_by_flags(self):
        rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2} for i in range(4)]
        ds = data.load_data(str(write_folder(self.dir / "p", ".csv", rows, rows)))
        self.assertTrue(ds.pair)
        self.assertEqual(ds["train"]["text_pair"], ["b0", "b1", "b2", "b3"])
        rows = [{"q": f"a{i}", "doc": f"b{i}", "y": "yes" if i % 2 else "no", "text": "x"} for i in range(4)]
        folder = write_folder(self.dir / "p2", ".parquet", rows, rows)
        ds = data.load_data(str(folder), columns=data.Columns(text="q", text_pair="doc", label="y"))
        self.assertEqual((ds["train"]["text"][1], ds["train"]["text_pair"][1]), ("a1", "b1"))
        self.assertEqual(ds.label_names, ("no", "yes"))

    def test_single_file_split_for_evaluation_against_a_models_classes(self):
        path = self.dir / "held_out.csv"
        pd.DataFrame([{"text": "x", "label": "tech"}, {"text": "y", "label": "food"}]).to_csv(path, index=False)
        ds, where = data.load_split(str(path), known=["billing", "food", "tech"])
        self.assertEqual((ds["data"]["label"], where), ([2, 1], str(path)))
        with self.assertRaisesRegex(UserError, r"held_out\.csv: label 'tech' not among the model's classes"):
            data.load_split(str(path), known=["billing", "food"])
        texts, _ = data.load_split(str(path), labelled=False, columns=data.Columns(text="label"))
        self.assertEqual(texts["data"].column_names, ["text"])


REVERSED_CARD = """---
dataset_info:
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': positive
          '1': negative
---
"""


class CardAndCellsTest(DataTestCase):
    def test_a_cards_names_map_onto_a_models_classes_by_name(self):
        rows = [{"text": "great film", "label": 0}, {"text": "awful film", "label": 1}, {"text": "superb", "label": 0}]
        for suffix in (".jsonl", ".json", ".csv"):
            with self.subTest(suffix):
                folder = write_folder(self.dir / f"card{suffix[1:]}", suffix, rows, rows)
                (folder / "README.md").write_text(REVERSED_CARD)
                ds = data.load_data(str(folder))
                self.assertEqual(ds.label_names, ("positive", "negative"))  # the card's order, json included
                held_out, _ = data.load_split(str(folder), known=["negative", "positive"])
                self.assertEqual(held_out["data"]["label"], [1, 0, 1])  # by name onto the model's ids, not as ids
                with self.assertRaisesRegex(UserError, "'negative' not among the model's classes"):
                    data.load_split(str(folder), known=["positive", "neutral"])

    def test_csv_cells_are_read_as_written_and_a_plain_readme_is_not_a_card(self):
        rows = [{"text": "0042", "label": "a"}, {"text": "1.50", "label": "b"}, {"text": "True", "label": "a"}]
        folder = write_folder(self.dir / "cells", ".csv", rows, rows)
        (folder / "README.md").write_text("---\n# My data\nSome words.\n\n---\n")
        self.assertEqual(data.load_data(str(folder))["train"]["text"], ["0042", "1.50", "True"])

    def test_only_the_split_used_is_read(self):
        folder = write_folder(self.dir / "only", ".csv", [{"text": "a", "label": "x"}], [{"text": "b", "label": "x"}])
        (folder / "train.csv").write_text('text,label\n"never closed,x\n')
        held_out, where = data.load_split(str(folder))
        self.assertEqual((held_out["data"]["text"], Path(where).name), (["b"], "validation.csv"))
        with self.assertRaisesRegex(UserError, r"no split 'dev'; it has train, validation; pass --split NAME"):
            data.load_split(str(folder), split="dev")

    def test_txt_blank_lines_are_skipped(self):
        path = self.dir / "texts.txt"
        path.write_text("good\n\nbad\n\n\n")
        texts, _ = data.load_split(str(path), labelled=False)
        self.assertEqual(texts["data"]["text"], ["good", "bad"])


class BadInputTest(DataTestCase):
    """Each malformed source: one line naming the file and what to do."""

    def assert_one_line(self, folder: Path, *patterns: str, **kwargs) -> None:
        with self.assertRaises(UserError) as ctx:
            data.load_data(str(folder), **kwargs)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        for pattern in patterns:
            self.assertRegex(message, pattern)

    def test_missing_folder_and_folder_without_split_files(self):
        self.assert_one_line(self.dir / "nope", "nope does not exist", r"train\.csv")
        (self.dir / "notes.txt").write_text("x")
        self.assert_one_line(self.dir, "has no split files")
        (self.dir / "train.tsv").write_text("sentence\tlabel\nx\t1\n")  # no validation file
        self.assert_one_line(self.dir, "training needs", "validation")

    def test_folder_mixing_formats(self):
        write_folder(self.dir / "m", ".csv", [{"text": "a", "label": 1}], [{"text": "a", "label": 1}])
        (self.dir / "m" / "validation.csv").rename(self.dir / "m" / "validation.jsonl")
        self.assert_one_line(self.dir / "m", "mixes formats")

    def test_malformed_files_name_the_file(self):
        folder = self.dir / "bad"
        write_folder(folder, ".csv", [{"text": "a", "label": 1}], [{"text": "b", "label": 0}])
        (folder / "train.csv").write_text('text,label\n"never closed,1\n')
        self.assert_one_line(folder, r"train\.csv: cannot read it as CSV")
        (folder / "train.csv").write_text("text,label\na,1,extra,fields\n")
        self.assert_one_line(folder, r"train\.csv: cannot read it as CSV")
        write_folder(folder, ".jsonl", [{"text": "a", "label": 1}], [{"text": "b", "label": 0}])
        for name in ("train.csv", "validation.csv"):
            (folder / name).unlink()
        (folder / "validation.jsonl").write_text('{"text": "a", "label": 1}\nnot json\n')
        self.assert_one_line(folder, r"validation\.jsonl: cannot read it as JSONL")

    def test_empty_files_and_files_without_rows(self):
        good = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
        cases = (("train.csv", "", "the file is empty"), ("train.csv", "text,label\n", r"no rows \(a header line only\)"),
                 ("train.json", "[]", "no rows"), ("train.jsonl", "\n\n", "the file is empty"))
        for name, content, pattern in cases:
            with self.subTest(name=name, content=content):
                suffix = Path(name).suffix
                folder = write_folder(self.dir / f"e{len(content)}{suffix[1:]}", suffix, good, good)
                (folder / name).write_text(content)
                self.assert_one_line(folder, rf"{name}: {pattern}")
        folder = write_folder(self.dir / "pq", ".parquet", good, good)
        pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(
            folder / "train.parquet")
        self.assert_one_line(folder, r"train\.parquet: no rows")

    def test_a_non_text_column(self):
        folder = write_folder(self.dir / "ints", ".parquet", [{"text": 5, "label": "x"}], [{"text": 6, "label": "x"}])
        self.assert_one_line(folder, r"train\.parquet: column 'text' holds int values \(row 1: 5\), not text")

    def test_unknown_columns_and_missing_defaults(self):
        folder = write_folder(self.dir / "c", ".csv", [{"body": "a", "y": 1}] * 2, [{"body": "b", "y": 0}])
        self.assert_one_line(folder, r"train\.csv: no text column", "body, y", "--text_column")
        self.assert_one_line(folder, r"no label column", "--label_column", columns=data.Columns(text="body"))
        self.assert_one_line(folder, r"no column 'labl' \(--label_column\)", columns=data.Columns("body", None, "labl"))
        self.assert_one_line(folder, r"no column 'b2' \(--text_pair_column\)",
                             columns=data.Columns("body", "b2", "y"))

    def test_empty_texts_and_labels(self):
        for rows, pattern in (
            ([{"text": "a", "label": 1}, {"text": "  ", "label": 0}], r"train\.csv: row 2 has an empty 'text'"),
            ([{"text": "a", "label": 1}, {"text": "b", "label": ""}], r"train\.csv: row 2 has an empty label"),
        ):
            with self.subTest(pattern):
                folder = write_folder(self.dir / "e", ".csv", rows, [{"text": "b", "label": 0}])
                self.assert_one_line(folder, pattern)

    def test_mixed_fractional_negative_and_unknown_labels(self):
        cases = (
            ([1, "neg"], ".jsonl", r"mix integers \(row 1: 1\) and class names", {}),
            (["1", "neg"], ".csv", "mix integers", {}),
            ([0.5, 1.0], ".jsonl", "a fraction", {}),
            ([0, -1], ".csv", "row 2 has label -1", {}),
            ([0, 5], ".csv", r"label 5 .* among --class_names \(2: a, b\)", {"label_names": ["a", "b"]}),
            (["x", "y"], ".csv", "'y' not among --class_names", {"label_names": ["x", "z"]}),
            (["same", "same"], ".csv", "only one class", {}),
        )
        for labels, suffix, pattern, kwargs in cases:
            with self.subTest(labels=labels):
                rows = [{"text": f"t{i}", "label": y} for i, y in enumerate(labels)]
                folder = write_folder(self.dir / f"l{abs(hash(pattern))}", suffix, rows, rows[:1])
                self.assert_one_line(folder, pattern, **kwargs)


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
        self.assertIn("--data /path/to/folder", message)
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
        encoded = data.tokenize(data.load_data(str(folder)).splits, self.tokenizer, max_length=8)
        train = encoded["train"]
        self.assertNotIn("text", train.column_names)
        self.assertIn(data.LENGTH_COLUMN, train.column_names)
        self.assertEqual(train[data.LENGTH_COLUMN], [len(ids) for ids in train["input_ids"]])
        self.assertEqual(train[data.LENGTH_COLUMN], [3, 8])  # [CLS] short [SEP]; truncated at 8

        batch = data.PaddingCollator(self.tokenizer)([train[0], train[1]])
        self.assertNotIn(data.LENGTH_COLUMN, batch)
        self.assertEqual(tuple(batch["input_ids"].shape), (2, 8))
        self.assertEqual(batch["labels"].tolist(), [1, 0])

    def test_pairs_are_tokenized_as_pairs(self):
        rows = [{"sentence1": "the cat sat", "sentence2": "a cat was sitting", "label": 1}] * 2
        encoded = data.tokenize(data.load_data(str(write_folder(self.dir / "p", ".csv", rows, rows))).splits,
                                self.tokenizer, max_length=64)["train"]
        expected = self.tokenizer("the cat sat", "a cat was sitting")
        self.assertEqual(encoded[0]["input_ids"], expected["input_ids"])
        self.assertEqual(encoded[0]["token_type_ids"], expected["token_type_ids"])  # segment B marked
        self.assertIn(1, encoded[0]["token_type_ids"])


if __name__ == "__main__":
    unittest.main()
