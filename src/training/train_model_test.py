"""End-to-end tests of the real entry point on a tiny random BERT and an easy synthetic data set."""

import contextlib
import functools
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import load_file

from src.common.classify import EXIT_QUALITY_GATE, evaluate, predict_one
from src.common.data import ID2LABEL, LABEL2ID, PaddingCollator, load_data, tokenize
from src.common.errors import EXIT_USAGE
from src.common.models import load_sequence_classifier, load_tokenizer
from src.common.paths import BAZEL_TEST_OUTPUTS_ENV
from src.common.testing import (
    make_tiny_base_bert,
    make_tiny_bert,
    run_cli_captured,
    synthetic_sentiment_rows,
    write_sst2_folder,
)
from src.training import config as config_module
from src.training import train_model
from src.training.config import LOG_FILE

METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "confusion_matrix", "per_class", "macro_precision",
               "macro_recall", "macro_f1", "weighted_precision", "weighted_recall", "weighted_f1"}
PHASES = ("evaluate before", "train", "evaluate after")  # the default run's progress bars
HEAD_LINE = "new classification head (classifier.weight, classifier.bias): initialised randomly, trained by this job"


run_main = functools.partial(run_cli_captured, train_model.main)  # -> (exit code, stdout, stderr)


class TrainModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        base = os.environ.get(BAZEL_TEST_OUTPUTS_ENV)
        cls.dir = Path(tempfile.mkdtemp(prefix="train_model_test-", dir=base))
        if not base:
            cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.model_dir = make_tiny_bert(cls.dir / "tiny-bert")
        cls.data_dir = write_sst2_folder(
            cls.dir / "data", train=synthetic_sentiment_rows(128, seed=0), dev=synthetic_sentiment_rows(32, seed=1)
        )
        cls.output_dir = cls.dir / "run"
        cls.code, cls.stdout, cls.stderr = run_main(
            [
                "--model", str(cls.model_dir),
                "--data", str(cls.data_dir),
                "--max_length", "32",
                "--disable_tqdm", "true",
                "--output_dir", str(cls.output_dir),
                "--num_train_epochs", "4",
                "--per_device_train_batch_size", "16",
                "--learning_rate", "1e-2",  # a tiny random model needs a large step to learn in 32 steps
                "--logging_steps", "2",
                "--expect_min_accuracy", "0.6",
            ]
        )  # fmt: skip
        cls.report = json.loads((cls.output_dir / train_model.METRICS_FILE).read_text())

    def test_run_succeeds_and_prints_the_summary(self):
        self.assertEqual(self.code, 0, self.stderr)
        for fragment in ("accuracy", "confusion matrix before", "confusion matrix after", "sample", "peak RSS"):
            self.assertIn(fragment, self.stdout)

    def test_metrics_json_has_before_and_after(self):
        for when in ("before", "after"):
            self.assertEqual(set(self.report[when]["metrics"]), METRIC_KEYS)
            self.assertEqual(self.report[when]["examples"], 32)
        self.assertGreater(self.report["after"]["metrics"]["accuracy"], self.report["before"]["metrics"]["accuracy"])
        for key in ("precision", "threads", "timings", "peak_rss_mib", "versions", "config", "sample_prediction"):
            self.assertIn(key, self.report)
        self.assertEqual(self.report["train"]["steps"], 32)  # 128 examples / 16 per step * 4 epochs

    def test_training_loss_falls(self):
        losses = [entry["loss"] for entry in self.report["train"]["log_history"] if "loss" in entry]
        self.assertGreaterEqual(len(losses), 4)
        self.assertLess(sum(losses[-3:]) / 3, 0.5 * sum(losses[:3]) / 3)

    def test_parameters_changed(self):
        initial = load_file(self.model_dir / "model.safetensors")
        trained = load_file(self.output_dir / train_model.MODEL_SUBDIR / "model.safetensors")
        self.assertEqual(initial.keys(), trained.keys())
        changed = [name for name in initial if not torch.equal(initial[name], trained[name])]
        self.assertIn("classifier.weight", changed)
        self.assertGreater(len(changed), len(initial) // 2)

    def test_console_logs_the_loss_without_bars_and_prints_no_log_dicts(self):
        # --disable_tqdm true: the loss every --logging_steps as one line each, no Trainer dicts anywhere.
        loss_line = r"step 2/32 \(epoch 0\.25\): loss \d\.\d+, grad norm \S+, lr \S+, [\d.]+ examples/s"
        self.assertRegex(self.stderr, loss_line)
        self.assertIn("step 8/32 (epoch 1.00): eval loss", self.stderr)
        for text in (self.stdout, self.stderr):
            self.assertNotIn("{'", text)
        self.assertNotIn("%|", self.stderr)  # no progress bar at all, the libraries' included

    def test_log_file_has_the_whole_run(self):
        log = (self.output_dir / LOG_FILE).read_text()
        self.assertTrue(log.startswith("===== "), log[:200])
        self.assertIn("--output_dir", log.splitlines()[0])  # the separator names the command
        fragments = ("INFO src.common.training_logs: step 2/32", "INFO transformers.trainer: ***** Running training",
                     "before fine-tuning: accuracy", "wrote ")  # fmt: skip
        for fragment in fragments:
            self.assertIn(fragment, log)
        self.assertIn(f"log        {self.output_dir / LOG_FILE}", self.stdout)

    def test_saved_model_reloads_to_the_same_predictions(self):
        saved = str(self.output_dir / train_model.MODEL_SUBDIR)
        tokenizer = load_tokenizer(saved)
        model = load_sequence_classifier(saved)  # its own classes, from the saved config
        self.assertEqual(model.config.id2label, {0: "0", 1: "1"})  # integer labels without names: their ids
        sample = self.report["sample_prediction"]
        again = predict_one(model, tokenizer, sample["text"], self.report["precision"], max_length=32)
        self.assertEqual(again["label"], sample["label"])
        self.assertAlmostEqual(again["probability"], sample["probability"], places=5)

        validation = tokenize(load_data(str(self.data_dir)).splits, tokenizer, max_length=32)["validation"]
        evaluation = evaluate(model, validation, PaddingCollator(tokenizer), 8, self.report["precision"])
        self.assertEqual(evaluation.metrics, self.report["after"]["metrics"])


class ConsoleOutputTest(unittest.TestCase):
    """What the console shows: a bar per phase, one line about the new head, no library bars or log dicts."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="console_test-"))
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.base_model = make_tiny_base_bert(cls.dir / "tiny-base")
        cls.data_dir = write_sst2_folder(cls.dir / "data", synthetic_sentiment_rows(32), synthetic_sentiment_rows(8, 1))
        cls.output_dir = cls.dir / "run"
        cls.argv = ["--model", str(cls.base_model), "--data", str(cls.data_dir), "--output_dir", str(cls.output_dir),
                    "--max_length", "16", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
                    "--logging_steps", "1", "--save_model", "false"]  # fmt: skip
        cls.code, cls.stdout, cls.stderr = run_main([*cls.argv, "--disable_tqdm", "false"])
        log = cls.output_dir / LOG_FILE
        cls.log_after_first_run = log.read_text() if log.is_file() else ""

    def test_one_progress_bar_per_phase_and_no_other(self):
        self.assertEqual(self.code, 0, self.stderr)
        bar_lines = [line for line in re.split(r"[\r\n]", self.stderr) if "%|" in line]
        names = {line.split(":")[0].strip() for line in bar_lines}
        # Not "Loading weights", "Writing model shards", nor the Trainer's unnamed bar for its evaluation.
        self.assertEqual(names, {*PHASES, "train (evaluating)"}, bar_lines)
        finished = [line for line in bar_lines if "100%" in line]
        self.assertTrue(any(re.search(r"^train: .*4/4 steps .*[\d.]+ examples/s, loss \d", line) for line in finished))
        self.assertTrue(any(re.search(r"^evaluate after: .*8/8 examples .* examples/s", line) for line in finished))
        for text in (self.stdout, self.stderr):
            self.assertNotIn("{'", text)  # no Trainer log dicts
        self.assertNotIn("step 1/4", self.stderr)  # the bar shows the loss; the log lines go to the log file

    def test_the_new_head_is_one_info_line(self):
        self.assertEqual(self.code, 0, self.stderr)
        self.assertIn(HEAD_LINE, self.stderr)
        for fragment in ("LOAD REPORT", "MISSING", "newly initialized", "WARNING"):
            self.assertNotIn(fragment, self.stderr)
        self.assertIn("INFO transformers.modeling_utils: BertForSequenceClassification LOAD REPORT",
                      self.log_after_first_run)  # the full table is kept in the log file  # fmt: skip
        self.assertIn("INFO src.common.training_logs: step 1/4", self.log_after_first_run)

    def test_log_level_warning_hides_our_info_lines_and_the_log_file_keeps_both_runs(self):
        code, stdout, stderr = run_main([*self.argv, "--disable_tqdm", "true", "--log_level", "warning"])
        self.assertEqual(code, 0, stderr)
        self.assertEqual(stderr, "")
        self.assertIn("confusion matrix after", stdout)
        log = (self.output_dir / LOG_FILE).read_text()
        self.assertTrue(log.startswith(self.log_after_first_run))  # appended, the first run's log intact
        self.assertEqual(log.count("===== "), 2)
        second_run = log[len(self.log_after_first_run) :]
        for fragment in (HEAD_LINE, "step 4/4 (epoch 1.00): loss", "before fine-tuning"):
            self.assertIn(fragment, second_run)

    def test_unexpected_load_report_rows_still_warn(self):
        # The head is new, but a weight of the base model is missing too: not the expected case, a warning.
        model = load_sequence_classifier(str(self.base_model), 2, ID2LABEL, LABEL2ID)
        message = "BertForSequenceClassification LOAD REPORT from: x\nKey | Status\n----+-------\n" + "".join(
            f"{key} | MISSING\n" for key in ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight")
        )
        report = logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)
        with self.assertLogs("transformers.modeling_utils", "WARNING") as warned:
            train_model.explain_new_head(model, report)
        self.assertIn("bert.pooler.dense.weight", warned.output[0])


class TrainModelExitCodeTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def assertUsageError(self, argv: list[str], fragment: str) -> None:
        code, stdout, stderr = run_main(argv + ["--output_dir", str(self.dir / "out")])
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(stdout, "")
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(fragment, lines[0])
        self.assertFalse((self.dir / "out").exists())  # nothing was started

    def test_bad_flag_values_exit_2_with_one_line(self):
        self.assertUsageError(["--learning_rate", "-1"], "--learning_rate must be > 0")
        self.assertUsageError(["--data", str(self.dir / "no-such-folder")], "no-such-folder")
        self.assertUsageError(["--model", "builtin:unknown"], "unknown builtin model")
        self.assertUsageError(["--bogus"], "unrecognized arguments: --bogus")

    def test_bad_input_leaves_the_output_folder_and_its_log_untouched(self):
        out = self.dir / "out"
        out.mkdir()
        (out / LOG_FILE).write_text("an earlier run\n")
        bad_data = write_sst2_folder(self.dir / "bad", [("fine", 1)], [("fine", 1)])
        (bad_data / "train.tsv").write_text("sentence\tlabel\nfine\tgood\n")  # found only when the job reads the data
        for argv in (["--learning_rate", "-1"], ["--data", str(bad_data)]):
            with self.subTest(argv=argv):
                code, _, stderr = run_main([*argv, "--output_dir", str(out)])
                self.assertEqual(code, EXIT_USAGE)
                self.assertEqual(len(stderr.splitlines()), 1, stderr)
                self.assertEqual(sorted(p.name for p in out.iterdir()), [LOG_FILE])
                self.assertEqual((out / LOG_FILE).read_text(), "an earlier run\n")

    def test_help_describes_every_flag(self):
        # Help texts go through argparse's %-formatting: a stray % in one breaks --help for every flag.
        for task, flag in (([], "--dropout"), (["--task", "causal-lm"], "--lora_r")):
            stdout = io.StringIO()
            with self.subTest(task=task), contextlib.redirect_stdout(stdout), self.assertRaises(SystemExit) as exit_:
                train_model.main([*task, "--help"])
            self.assertEqual(exit_.exception.code, 0)
            self.assertIn(flag, stdout.getvalue())

    def test_quality_gate_exits_3_and_keeps_outputs(self):
        model_dir = make_tiny_bert(self.dir / "tiny")
        data_dir = write_sst2_folder(self.dir / "data", synthetic_sentiment_rows(16), synthetic_sentiment_rows(8, 1))
        out = self.dir / "gate"
        code, _, stderr = run_main(
            ["--model", str(model_dir), "--data", str(data_dir), "--output_dir", str(out), "--max_steps", "1",
             "--learning_rate", "1e-6", "--disable_tqdm", "true", "--expect_min_accuracy", "1.0"]
        )  # fmt: skip
        self.assertEqual(code, EXIT_QUALITY_GATE)
        self.assertIn("error: validation accuracy", stderr.splitlines()[-1])
        self.assertTrue((out / train_model.METRICS_FILE).is_file())



class Bf16PathTest(unittest.TestCase):
    def test_bf16_autocast_run_keeps_fp32_weights(self):
        """The bf16 path on any CPU: pretend it has AMX (on one without, bf16 is emulated: slower, still correct)."""
        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        model_dir = make_tiny_bert(work / "tiny")
        data_dir = write_sst2_folder(work / "data", synthetic_sentiment_rows(32), synthetic_sentiment_rows(8, seed=1))
        with mock.patch.object(config_module, "cpu_flags", return_value=frozenset({"amx_bf16"})):
            code, _, stderr = run_main(
                ["--model", str(model_dir), "--data", str(data_dir), "--output_dir", str(work / "out"),
                 "--max_steps", "4", "--logging_steps", "1", "--per_device_train_batch_size", "8",
                 "--disable_tqdm", "true"]
            )  # fmt: skip
        self.assertEqual(code, 0, stderr)
        report = json.loads((work / "out" / train_model.METRICS_FILE).read_text())
        self.assertEqual(report["precision"], "bf16")
        losses = [entry["loss"] for entry in report["train"]["log_history"] if "loss" in entry]
        self.assertEqual(len(losses), 4)
        self.assertTrue(all(math.isfinite(loss) for loss in losses))
        weights = load_file(work / "out" / train_model.MODEL_SUBDIR / "model.safetensors")
        self.assertEqual({t.dtype for t in weights.values()}, {torch.float32})


if __name__ == "__main__":
    unittest.main()
