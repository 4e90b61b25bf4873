"""A model trained by train_model, used without retraining: evaluate reports the job's own "after" metrics on any
labelled data, predict gives each text's class back under the names it was trained on, in every input and output
format; a model trained on sentence pairs evaluates and predicts pairs. Bad input: one line, exit 2, nothing
written."""

import functools
import json
import random
import shutil
import tempfile
import unittest
from pathlib import Path

import pandas as pd

from src.cache_manager.store import FinetunedModelStore
from src.common.classify import EXIT_QUALITY_GATE
from src.common.errors import EXIT_USAGE
from src.common.testing import make_tiny_base_bert, run_cli_captured
from src.training import evaluate, predict, train_model

TOPICS = {  # class name -> words that give it away
    "food": ("soup", "pasta", "bread", "curry"),
    "sport": ("football", "tennis", "rugby", "golf"),
    "weather": ("rain", "snow", "storm", "sunshine"),
}
TEMPLATES = ("I keep thinking about the {} today", 'she said "the {}, again", and left', "{} is all\nwe talked about")
COMMON = ["--max_length", "32", "--disable_tqdm", "true", "--learning_rate", "3e-3", "--num_train_epochs", "10",
          "--per_device_train_batch_size", "16", "--seed", "3"]  # fmt: skip


def topic_rows(n: int, seed: int) -> list[dict]:
    """`n` rows of text (quotes, commas and newlines included) and a string label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % len(TOPICS)]
        rows.append({"text": rng.choice(TEMPLATES).format(rng.choice(TOPICS[label])), "label": label})
    return rows


def pair_rows(n: int, seed: int) -> list[dict]:
    """Pairs whose label says whether both sentences are about food (integer labels 0/1): learnable by a tiny
    model from the second sentence, but read as a pair."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first, second = "food", "food" if i % 2 else rng.choice(["sport", "weather"])
        rows.append({"sentence1": f"a story about {rng.choice(TOPICS[first])}",
                     "sentence2": f"news on {rng.choice(TOPICS[second])}", "label": i % 2})
    return rows


run_train = functools.partial(run_cli_captured, train_model.main)
run_evaluate = functools.partial(run_cli_captured, evaluate.main)
run_predict = functools.partial(run_cli_captured, predict.main)


class EvaluatePredictTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="evaluate_predict_test-"))
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.base = make_tiny_base_bert(cls.dir / "tiny-base")
        cls.data = cls.dir / "topics"
        cls.data.mkdir()
        pd.DataFrame(topic_rows(144, seed=0)).to_csv(cls.data / "train.csv", index=False)
        cls.validation = topic_rows(30, seed=1)
        pd.DataFrame(cls.validation).to_csv(cls.data / "validation.csv", index=False)
        cls.out = cls.dir / "topics-run"
        code, _, stderr = run_train(["--model", str(cls.base), "--data", str(cls.data), "--output_dir", str(cls.out),
                                     *COMMON])
        assert code == 0, stderr
        cls.report = json.loads((cls.out / train_model.METRICS_FILE).read_text())

        cls.pairs = cls.dir / "pairs"
        cls.pairs.mkdir()
        for split, n, seed in (("train", 160, 2), ("validation", 24, 3)):
            pd.DataFrame(pair_rows(n, seed)).to_json(cls.pairs / f"{split}.jsonl", orient="records", lines=True)
        cls.pairs_out = cls.dir / "pairs-run"
        code, _, stderr = run_train(["--model", str(cls.base), "--data", str(cls.pairs), "--output_dir",
                                     str(cls.pairs_out), *COMMON])
        assert code == 0, stderr
        cls.pairs_report = json.loads((cls.pairs_out / train_model.METRICS_FILE).read_text())

    def evaluate(self, *argv: str) -> dict:
        output = self.dir / f"evaluation-{len(list(self.dir.glob('evaluation-*')))}.json"
        code, stdout, stderr = run_evaluate([*argv, "--max_length", "32", "--output", str(output)])
        self.assertEqual(code, 0, stderr)
        self.assertIn("confusion matrix:", stdout)
        return json.loads(output.read_text())["evaluation"]

    def predict(self, input_path: Path, suffix: str = ".jsonl", model: Path | None = None) -> list[dict]:
        output = self.dir / f"predictions-{input_path.stem}{suffix}"
        code, _, stderr = run_predict(["--model", str(model or self.out), "--input", str(input_path), "--output",
                                       str(output), "--max_length", "32"])
        self.assertEqual(code, 0, stderr)
        if suffix == ".csv":
            return pd.read_csv(output, keep_default_na=False).to_dict("records")
        return [json.loads(line) for line in output.read_text().splitlines()]

    def test_the_job_learned_three_named_classes(self):
        self.assertEqual(self.report["classes"], ["food", "sport", "weather"])  # string labels, sorted
        after = self.report["after"]["metrics"]
        self.assertGreater(after["accuracy"], 0.9)
        self.assertEqual(list(after["per_class"]), ["food", "sport", "weather"])
        config = json.loads((self.out / "model" / "config.json").read_text())
        self.assertEqual(config["id2label"], {"0": "food", "1": "sport", "2": "weather"})

    def test_evaluate_reports_the_jobs_after_metrics_from_every_model_folder(self):
        for model in (self.out, self.out / "model"):  # train_model's output folder, or its model/ folder
            with self.subTest(model=model.name):
                result = self.evaluate("--model", str(model), "--data", str(self.data))
                self.assertEqual(result["metrics"], self.report["after"]["metrics"])
                self.assertAlmostEqual(result["loss"], self.report["after"]["loss"], places=5)
        # A model-store entry (<root>/<key>/model), as the cache manager keeps fine-tuned models.
        store = FinetunedModelStore(self.dir / "store")
        key = "ab" * 32  # a key_for() digest's shape
        store.put(key, self.out / "model", {"base_model": str(self.base)})
        result = self.evaluate("--model", str(store.entry_dir(key)), "--data", str(self.data))
        self.assertEqual(result["metrics"], self.report["after"]["metrics"])
        # One file is its own split: the same examples, the same metrics.
        single = self.evaluate("--model", str(self.out), "--data", str(self.data / "validation.csv"))
        self.assertEqual(single["metrics"], self.report["after"]["metrics"])

    def test_predict_gives_the_trained_names_back_in_input_order_in_every_format(self):
        texts = [row["text"] for row in self.validation]
        one_line = [t.replace("\n", " ") for t in texts]
        (self.dir / "texts.txt").write_text("\n".join(one_line) + "\n")
        pd.DataFrame({"text": texts}).to_csv(self.dir / "texts.csv", index=False)
        pd.DataFrame({"text": texts}).to_json(self.dir / "texts.jsonl", orient="records", lines=True)
        expected_accuracy = self.report["after"]["metrics"]["accuracy"]
        for name, suffix in (("texts.csv", ".csv"), ("texts.jsonl", ".jsonl"), ("texts.csv", ".jsonl")):
            with self.subTest(input=name, output=suffix):
                records = self.predict(self.dir / name, suffix)
                self.assertEqual([r["text"] for r in records], texts)  # multi-line, quoted texts intact, in order
                self.assertLessEqual({r["label"] for r in records}, set(TOPICS))
                self.assertTrue(all(0 < float(r["probability"]) <= 1 for r in records))
                accuracy = sum(r["label"] == row["label"] for r, row in zip(records, self.validation)) / len(texts)
                self.assertAlmostEqual(accuracy, expected_accuracy)  # the same predictions evaluate scored
        records = self.predict(self.dir / "texts.txt")
        self.assertEqual([r["text"] for r in records], one_line)

    def test_sentence_pairs_round_trip(self):
        self.assertTrue(self.pairs_report["sentence_pairs"])
        self.assertEqual(self.pairs_report["classes"], ["0", "1"])  # integer labels without names: their ids
        self.assertGreater(self.pairs_report["after"]["metrics"]["accuracy"], 0.9)
        result = self.evaluate("--model", str(self.pairs_out), "--data", str(self.pairs))
        self.assertEqual(result["metrics"], self.pairs_report["after"]["metrics"])
        records = self.predict(self.pairs / "validation.jsonl", model=self.pairs_out)
        rows = pair_rows(24, 3)
        self.assertEqual([(r["text"], r["text_pair"]) for r in records], [(r["sentence1"], r["sentence2"]) for r in rows])
        accuracy = sum(r["label"] == str(row["label"]) for r, row in zip(records, rows)) / len(rows)
        self.assertAlmostEqual(accuracy, result["metrics"]["accuracy"])

    def test_single_texts_on_a_pair_model_warn(self):
        path = self.dir / "singles.csv"
        pd.DataFrame({"text": ["a story about golf"]}).to_csv(path, index=False)
        code, _, stderr = run_predict(["--model", str(self.pairs_out), "--input", str(path), "--output",
                                       str(self.dir / "singles.jsonl")])
        self.assertEqual(code, 0, stderr)
        self.assertIn("has single texts but the model was trained on sentence pairs", stderr)


class BadInputTest(unittest.TestCase):
    """One line on stderr, exit 2, and no output file."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="evaluate_predict_bad-"))
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        base = make_tiny_base_bert(cls.dir / "tiny-base")
        data = cls.dir / "topics"
        data.mkdir()
        pd.DataFrame(topic_rows(24, seed=0)).to_csv(data / "train.csv", index=False)
        pd.DataFrame(topic_rows(6, seed=1)).to_csv(data / "validation.csv", index=False)
        cls.model = cls.dir / "run"
        code, _, stderr = run_train(["--model", str(base), "--data", str(data), "--output_dir", str(cls.model),
                                     "--max_steps", "1", "--disable_tqdm", "true"])
        assert code == 0, stderr
        cls.causal = cls.dir / "causal"
        cls.causal.mkdir()
        (cls.causal / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                            "model_type": "llama"}))
        cls.unknown_labels = cls.dir / "unknown.csv"
        pd.DataFrame([{"text": "x", "label": "food"}, {"text": "y", "label": "music"}]).to_csv(cls.unknown_labels,
                                                                                             index=False)
        cls.texts = cls.dir / "texts.txt"
        cls.texts.write_text("a text\n")

    def assert_usage_error(self, run, argv: list[str], fragment: str) -> None:
        output = self.dir / "out.jsonl"
        code, stdout, stderr = run([*argv, "--output", str(output)])
        self.assertEqual(code, EXIT_USAGE, stderr)
        lines = stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(fragment, lines[0])
        self.assertFalse(output.exists())

    def test_evaluate(self):
        model = str(self.model)
        self.assert_usage_error(run_evaluate, ["--model", str(self.dir / "nope"), "--data", str(self.unknown_labels)],
                                "no config.json there or in model/")
        self.assert_usage_error(run_evaluate, ["--model", str(self.causal), "--data", str(self.unknown_labels)],
                                "LlamaForCausalLM, not a sequence classifier")
        self.assert_usage_error(run_evaluate, ["--model", model, "--data", str(self.unknown_labels)],
                                "unknown.csv: label 'music' not among the model's classes (food, sport, weather)")
        self.assert_usage_error(run_evaluate, ["--model", model, "--data", str(self.texts)], "no label column")
        self.assert_usage_error(run_evaluate, ["--model", model], "--data is required")
        self.assert_usage_error(run_evaluate, ["--model", model, "--data", str(self.unknown_labels), "--label_column",
                                               "y"], "no column 'y' (--label_column)")

    def test_evaluate_quality_gates_exit_3_with_one_line(self):
        held_out = self.dir / "topics-held-out.csv"
        pd.DataFrame(topic_rows(12, seed=5)).to_csv(held_out, index=False)
        for gate in ("--expect_min_accuracy", "--expect_min_macro_f1"):  # a model trained for one step is poor
            code, stdout, stderr = run_evaluate(["--model", str(self.model), "--data", str(held_out), gate, "0.99",
                                                 "--output", str(self.dir / "gated.json"), "--log_level", "warning",
                                                 "--show_progress", "false"])
            self.assertEqual(code, EXIT_QUALITY_GATE, stderr)
            self.assertRegex(stderr.strip(), rf"^error: \S+held-out\.csv (accuracy|macro f1) \d\.\d{{4}} is below {gate} 0\.99$")
            self.assertIn("confusion matrix:", stdout)  # the metrics are still printed and written
            self.assertTrue((self.dir / "gated.json").is_file())

    def test_predict(self):
        model = str(self.model)
        self.assert_usage_error(run_predict, ["--model", model], "--input is required")
        self.assert_usage_error(run_predict, ["--model", model, "--input", str(self.dir / "missing.txt")],
                                "does not exist")
        self.assert_usage_error(run_predict, ["--model", model, "--input", str(self.unknown_labels), "--text_column",
                                              "body"], "no column 'body' (--text_column)")
        empty = self.dir / "blank.csv"
        empty.write_text("text\none\n\"  \"\nthree\n")
        self.assert_usage_error(run_predict, ["--model", model, "--input", str(empty)], "row 2 has an empty 'text'")
        folder = self.dir / "a-folder"
        folder.mkdir(exist_ok=True)
        for run, argv in ((run_predict, ["--input", str(self.texts)]),
                          (run_evaluate, ["--data", str(self.unknown_labels)])):  # refused before any work
            code, _, stderr = run(["--model", model, *argv, "--output", str(folder)])
            self.assertEqual((code, stderr.strip()), (EXIT_USAGE, f"error: --output {folder} is a folder; name a file in it"))
        code, _, stderr = run_predict(["--model", model, "--input", str(self.texts), "--output", "x.xml"])
        self.assertEqual((code, stderr.strip()), (EXIT_USAGE, "error: --output x.xml: write .jsonl or .csv"))


if __name__ == "__main__":
    unittest.main()
