import json
import logging
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from src.common.checkpoints import mark_complete
from src.common.data import DEFAULT_DATA
from src.common.errors import UserError
from src.common.models import DEFAULT_MODEL
from src.common.paths import BAZEL_WORKING_DIR_ENV, OUTPUT_DIR_ENV
from src.training import config as config_module
from src.training.config import FinetuneConfig, parse_config

AMX_FLAGS = frozenset({"avx512f", "avx512_bf16", "amx_bf16"})
PLAIN_FLAGS = frozenset({"avx2", "fma"})


class ConfigTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        env = {OUTPUT_DIR_ENV: str(self.dir / "out")}
        for patcher in (
            mock.patch.dict(os.environ, env),
            mock.patch.object(config_module, "cpu_flags", return_value=PLAIN_FLAGS),  # a CPU without bf16
        ):
            patcher.start()
            self.addCleanup(patcher.stop)

    def assertUserError(self, argv: list[str], *fragments: str) -> None:
        with self.assertRaises(UserError) as ctx:
            parse_config(argv)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)


class DefaultsTest(ConfigTestCase):
    def test_cpu_fast_path_defaults(self):
        c = parse_config([])
        self.assertIsInstance(c, FinetuneConfig)
        self.assertEqual((c.model, c.data), (DEFAULT_MODEL, DEFAULT_DATA))
        self.assertEqual(c.output_dir, str(self.dir / "out"))
        self.assertTrue(c.use_cpu)
        self.assertEqual((c.per_device_train_batch_size, c.per_device_eval_batch_size), (64, 128))
        self.assertEqual(c.eval_strategy.value, "epoch")
        self.assertEqual(c.save_strategy.value, "no")
        self.assertEqual(c.train_sampling_strategy, "group_by_length")
        self.assertEqual(c.optim.value, "adamw_torch_fused")
        self.assertEqual(c.report_to, [])
        self.assertEqual((c.seed, c.dataloader_num_workers, c.max_length), (42, 0, 128))
        self.assertFalse(c.remove_unused_columns)
        self.assertTrue(c.save_model)
        self.assertIsNone(c.expect_min_accuracy)
        self.assertEqual(c.resolved_precision, "fp32")
        self.assertFalse(c.bf16)
        self.assertEqual((c.checkpoint_every, c.resume, c.save_total_limit), (0, False, 2))
        self.assertIsNone(c.resume_from_checkpoint)
        self.assertEqual((c.dropout, c.attn_implementation), (0.0, "eager"))

    def test_logging_defaults(self):
        c = parse_config([])
        self.assertEqual((c.log_level, c.console_log_level), ("info", logging.INFO))
        self.assertEqual(c.log_file, self.dir / "out" / "train.log")
        self.assertEqual(parse_config(["--log_level", "warning"]).console_log_level, logging.WARNING)
        self.assertEqual(parse_config(["--log_level", "passive"]).console_log_level, logging.INFO)
        self.assertUserError(["--log_level", "loud"], "invalid choice")
        # The Trainer would set transformers' loggers to --log_level, keeping their INFO records from the log file.
        self.assertEqual(parse_config(["--log_level", "error"]).trainer_arguments().log_level, "passive")

    def test_progress_bars_by_default_only_on_a_terminal(self):
        for tty in (True, False):
            with self.subTest(tty=tty), mock.patch.object(config_module.sys.stderr, "isatty", return_value=tty):
                self.assertEqual(parse_config([]).disable_tqdm, not tty)
                self.assertTrue(parse_config(["--disable_tqdm", "true"]).disable_tqdm)
                self.assertFalse(parse_config(["--disable_tqdm", "false"]).disable_tqdm)
        self.assertEqual(parse_config(["--disable_tqdm", "false"]).progress("train"), "train")
        self.assertIsNone(parse_config(["--disable_tqdm", "true"]).progress("train"))

    def test_relative_output_dir_is_relative_to_the_users_directory(self):
        with mock.patch.dict(os.environ, {BAZEL_WORKING_DIR_ENV: "/home/me/repo"}):
            self.assertEqual(parse_config(["--output_dir", "runs/a"]).output_dir, "/home/me/repo/runs/a")


class PrecisionTest(ConfigTestCase):
    def test_auto_uses_bf16_where_the_cpu_has_it(self):
        with mock.patch.object(config_module, "cpu_flags", return_value=AMX_FLAGS):
            c = parse_config([])
            self.assertEqual(c.resolved_precision, "bf16")
            self.assertTrue(c.bf16)
            self.assertFalse(parse_config(["--precision", "fp32"]).bf16)

    def test_bf16_without_cpu_support(self):
        self.assertUserError(["--precision", "bf16"], "--precision fp32")
        self.assertUserError(["--bf16"], "--precision fp32")

    def test_contradictions_and_unsupported_modes(self):
        with mock.patch.object(config_module, "cpu_flags", return_value=AMX_FLAGS):
            self.assertUserError(["--bf16", "--precision", "fp32"], "contradicts")
        self.assertUserError(["--fp16"], "--fp16 is not supported")
        self.assertUserError(["--precision", "fp8"], "invalid choice")


class ValidationTest(ConfigTestCase):
    def test_bad_values_say_what_to_do(self):
        cases = {
            ("--learning_rate", "-1"): "--learning_rate must be > 0",
            ("--learning_rate", "abc"): "invalid float value",
            ("--per_device_train_batch_size", "0"): "--per_device_train_batch_size must be >= 1",
            ("--num_train_epochs", "0"): "--num_train_epochs must be > 0",
            ("--max_length", "4"): "--max_length must be in [8, 512]",
            ("--max_length", "4096"): "--max_length must be in [8, 512]",
            ("--train_fraction", "0"): "--train_fraction must be in (0, 1]",
            ("--train_fraction", "1.5"): "--train_fraction must be in (0, 1]",
            ("--max_train_samples", "0"): "--max_train_samples must be >= 1",
            ("--expect_min_accuracy", "80"): "--expect_min_accuracy must be in [0, 1]",
            ("--sample_text", " "): "--sample_text must not be empty",
            ("--dropout", "1"): "--dropout must be in [0, 1)",
            ("--dropout", "-0.1"): "--dropout must be in [0, 1)",
            ("--attn_implementation", "flash"): "invalid choice",
            ("--checkpoint_every", "-1"): "--checkpoint_every must be >= 0",
            ("--checkpoint_every", "5", "--save_strategy", "epoch"): "drop one of them",
            ("--save_total_limit", "0"): "--save_total_limit must be >= 1",
            ("--resume_from_checkpoint", "x"): "unrecognized arguments",  # --resume finds the checkpoint
            ("--no_such_flag", "1"): "unrecognized arguments: --no_such_flag",
        }
        for argv, fragment in cases.items():
            with self.subTest(argv=argv):
                self.assertUserError(list(argv), fragment)

    def test_max_steps_replaces_epochs(self):
        c = parse_config(["--num_train_epochs", "0", "--max_steps", "5"])
        self.assertEqual(c.max_steps, 5)

    def test_missing_data_folder_and_model_dir(self):
        self.assertUserError(["--data", str(self.dir / "missing")], str(self.dir / "missing"), "does not exist")
        (self.dir / "empty").mkdir()
        self.assertUserError(["--data", str(self.dir / "empty")], "no split files", "train.csv")
        (self.dir / "empty" / "train.jsonl").write_text('{"text": "a", "label": 1}\n')
        self.assertUserError(["--data", str(self.dir / "empty")], "training needs", "validation")
        self.assertUserError(["--class_names", "a"], "two or more distinct classes")
        self.assertUserError(["--class_names", "a,a"], "two or more distinct classes")
        self.assertUserError(["--expect_min_macro_f1", "2"], "--expect_min_macro_f1 must be in [0, 1]")
        self.assertUserError(["--model", str(self.dir / "missing")], "existing directory")
        self.assertUserError(["--model", "builtin:nope"], "builtin:all-MiniLM-L6-v2")

    def test_trainingarguments_checks_become_user_errors(self):
        self.assertUserError(["--load_best_model_at_end", "--save_strategy", "steps"], "invalid training arguments")


class CheckpointConfigTest(ConfigTestCase):
    def checkpoint(self, step: int, complete: bool = True) -> Path:
        path = self.dir / "out" / "checkpoints" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"weights")
        if complete:
            mark_complete(path, step)
        return path

    def test_checkpoint_every_saves_to_the_checkpoints_folder(self):
        c = parse_config(["--checkpoint_every", "5"])
        self.assertEqual((c.save_strategy.value, c.save_steps), ("steps", 5))
        self.assertEqual(c.trainer_arguments().output_dir, str(self.dir / "out" / "checkpoints"))
        self.assertEqual(c.output_dir, str(self.dir / "out"))  # model/ and metrics.json stay here
        self.assertEqual(parse_config([]).trainer_arguments().output_dir, str(self.dir / "out"))

    def test_resume_finds_the_latest_complete_checkpoint(self):
        self.checkpoint(5)
        latest = self.checkpoint(10)
        self.checkpoint(15, complete=False)
        with self.assertLogs("src.common.checkpoints", "WARNING") as logs:
            self.assertEqual(parse_config(["--resume"]).resume_from_checkpoint, str(latest))
            self.assertEqual(parse_config(["--checkpoint_every", "5", "--resume"]).resume_from_checkpoint, str(latest))
        self.assertIn("ignoring incomplete checkpoint", logs.output[0])

    def test_checkpoints_of_an_earlier_run(self):
        self.checkpoint(15, complete=False)
        with self.assertLogs("src.common.checkpoints", "WARNING"):
            self.assertUserError(["--resume"], "--resume: no complete checkpoint in", "checkpoints")
        self.assertUserError(["--checkpoint_every", "5"], "holds checkpoints of an earlier run", "--resume")
        self.assertIsNone(parse_config([]).resume_from_checkpoint)  # a run without checkpoints does not mind


class ConfigFileTest(ConfigTestCase):
    def write(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)

    def test_json_values_are_defaults_that_flags_override(self):
        values = {"learning_rate": 3e-5, "num_train_epochs": 2, "max_train_samples": 100, "save_model": False}
        path = self.write("c.json", json.dumps(values | {"report_to": ["none"]}))
        c = parse_config(["--config", path, "--learning_rate", "1e-5"])
        self.assertEqual(c.learning_rate, 1e-5)
        self.assertEqual(c.num_train_epochs, 2)
        self.assertEqual(c.max_train_samples, 100)
        self.assertFalse(c.save_model)
        # order does not matter: the command line always wins
        self.assertEqual(parse_config(["--learning_rate", "1e-5", "--config", path]).learning_rate, 1e-5)

    def test_yaml_and_null(self):
        path = self.write("c.yaml", "max_length: 64\nmax_train_samples: null\nprecision: fp32\n")
        c = parse_config(["--config", path, "--max_train_samples", "7"])
        self.assertEqual((c.max_length, c.max_train_samples), (64, 7))
        self.assertIsNone(parse_config(["--config", path]).max_train_samples)
        self.assertIsNone(parse_config(["--config", self.write("d.yaml", "dropout: null\n")]).dropout)

    def test_bad_config_files(self):
        self.assertUserError(["--config", self.write("u.json", '{"learning_rat": 1}')], "unknown keys: learning_rat")
        self.assertUserError(["--config", self.write("b.json", "{not json")], "not valid JSON")
        self.assertUserError(["--config", self.write("l.json", "[1, 2]")], "mapping")
        self.assertUserError(["--config", self.write("v.json", '{"max_length": 2}')], "--max_length must be in")
        self.assertUserError(["--config", str(self.dir / "missing.json")], "cannot read config file")
        latin1 = self.dir / "latin1.yaml"
        latin1.write_bytes("sample_text: très bien\n".encode("latin-1"))
        self.assertUserError(["--config", str(latin1)], "config file")
        self.assertUserError(["--config", str(latin1)], "is not UTF-8 text")


class FingerprintTest(ConfigTestCase):
    def test_json_ready_and_sensitive_to_training_settings(self):
        a = parse_config([]).fingerprint()
        json.dumps(a)  # plain values only
        self.assertEqual(a, parse_config([]).fingerprint())
        self.assertNotEqual(a, parse_config(["--learning_rate", "3e-5"]).fingerprint())
        self.assertEqual(a, parse_config(["--per_device_eval_batch_size", "7"]).fingerprint())  # eval only


if __name__ == "__main__":
    unittest.main()
