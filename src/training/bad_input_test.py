"""Bad input that used to end in a traceback or a long wait, through the real entry point: each gets one error line
on stderr (after at most the job's own progress lines) and exit 2, fast, and leaves what an earlier run saved in the
output folder as it was.

  - a data file that is not UTF-8 (both jobs)
  - a model folder whose model.safetensors is truncated (both jobs)
  - a Hub id while the Hub cannot be reached and HF_HUB_OFFLINE is unset: refused connection, a server that never
    answers, and a Hub that answers "no such repository" (loopback servers stand in for the Hub)
"""

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import datasets
import huggingface_hub

from src.common import hub
from src.common.errors import EXIT_USAGE
from src.common.testing import (
    make_tiny_bert,
    run_cli_captured,
    synthetic_sentiment_rows,
    tiny_llama_gguf,
    write_sst2_folder,
)
from src.training import train_model

FAST_S = 10.0  # seconds from main() to the error, imports excluded: no download retries
LATIN1 = "un film très réussi".encode("latin-1")  # b"\xe8": not UTF-8


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class BadInputCase(unittest.TestCase):
    """Setup and the one assertion every bad input must pass; no tests of its own."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="bad_input_test-"))
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.tiny_bert = make_tiny_bert(cls.dir / "tiny-bert")
        cls.data = write_sst2_folder(cls.dir / "data", synthetic_sentiment_rows(16), synthetic_sentiment_rows(8, 1))

    def setUp(self):
        # An earlier run's outputs: a bad run must leave them byte for byte.
        self.output_dir = Path(tempfile.mkdtemp(dir=self.dir))
        (self.output_dir / "model").mkdir()
        (self.output_dir / "model" / "model.safetensors").write_bytes(b"earlier weights")
        (self.output_dir / "metrics.json").write_text('{"earlier": true}\n')
        self.before = snapshot(self.output_dir)

    def assert_one_line_exit_2(self, argv: list[str], *expected: str) -> None:
        start = time.perf_counter()
        code, stdout, stderr = run_cli_captured(train_model.main, [*argv, "--output_dir", str(self.output_dir)])
        seconds = time.perf_counter() - start
        self.assertEqual(code, EXIT_USAGE, stderr)
        *progress, error = stderr.strip().splitlines()
        self.assertTrue(error.startswith("error: "), stderr)
        for text in expected:
            self.assertIn(text, error)
        # Before the error only the job's own progress lines (none of the libraries' warnings or retries).
        for line in progress:
            self.assertRegex(line, r"^\d\d:\d\d:\d\d (INFO )?(src\.[\w.]+: )?[^ ]", stderr)
            self.assertNotRegex(line, r"WARNING|ERROR|Traceback", stderr)
        self.assertNotIn("Traceback", stdout + stderr)
        self.assertLess(seconds, FAST_S, f"took {seconds:.1f} s")
        # Byte for byte, and no train.log either: the run log opens only once the inputs proved valid.
        self.assertEqual(snapshot(self.output_dir), self.before, "the output folder changed")


class BadFilesTest(BadInputCase):
    # --- data files that are not UTF-8 ---

    def test_classification_data_not_utf8(self):
        bad = write_sst2_folder(self.dir / "latin1", synthetic_sentiment_rows(16), synthetic_sentiment_rows(8, 1))
        with (bad / "train.tsv").open("ab") as f:
            f.write(LATIN1 + b"\t1\n")
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(bad)], "not UTF-8", "train.tsv")

    def test_causal_lm_data_not_utf8(self):
        bad = self.dir / "latin1.jsonl"
        bad.write_bytes(b'{"instruction": "Say it.", "output": "' + LATIN1 + b'"}\n')
        self.assert_one_line_exit_2(
            ["--task", "causal-lm", "--model", str(tiny_llama_gguf()), "--data", str(bad)], "not UTF-8", "line 1"
        )

    # --- a truncated weights file ---

    def test_classification_model_with_truncated_weights(self):
        broken = Path(shutil.copytree(self.tiny_bert, self.dir / "truncated-bert", dirs_exist_ok=True))
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        self.assert_one_line_exit_2(
            ["--model", str(broken), "--data", str(self.data)], "truncated or corrupt", str(broken)
        )

    def test_causal_lm_model_with_truncated_weights(self):
        with mock.patch.dict(os.environ, {"CPU_FINETUNE_GGUF_STORE": str(self.dir / "gguf")}):
            from src.common.gguf_import import import_gguf

            imported = import_gguf(tiny_llama_gguf())
        broken = Path(shutil.copytree(imported, self.dir / "truncated-llama", dirs_exist_ok=True))
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:4096])
        self.assert_one_line_exit_2(["--task", "causal-lm", "--model", str(broken)], "truncated or corrupt")


class BadLabelledDataTest(BadInputCase):
    """Classification data in the formats people have, each malformed the way they are."""

    def folder(self, name: str, train: str, validation: str = "text,label\nfine,pos\nbad,neg\n") -> Path:
        folder = self.dir / name
        folder.mkdir(exist_ok=True)
        (folder / "train.csv").write_text(train)
        (folder / "validation.csv").write_text(validation)
        return folder

    def test_mixed_label_types(self):
        data = self.folder("mixed", "text,label\ngreat,1\nawful,neg\n")
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(data)], "train.csv",
                                    "mix integers")

    def test_unclosed_quote_and_long_rows(self):
        data = self.folder("quote", 'text,label\n"great,pos\nawful,neg\n')
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(data)], "train.csv",
                                    "cannot read it as CSV")
        data = self.folder("long", "text,label\ngreat,pos,extra\nawful,neg,extra\n")
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(data)], "train.csv",
                                    "more fields than the header")

    def test_unknown_column_and_empty_text(self):
        data = self.folder("cols", "text,label\ngreat,pos\n,neg\n")
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(data), "--label_column", "y"],
                                    "no column 'y' (--label_column)", "text, label")
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(data)], "train.csv: row 2",
                                    "empty 'text'")

    def test_validation_label_outside_class_names(self):
        data = self.folder("names", "text,label\ngreat,pos\nawful,neg\n", "text,label\nmeh,neutral\n")
        self.assert_one_line_exit_2(["--model", str(self.tiny_bert), "--data", str(data), "--class_names", "neg,pos"],
                                    "validation.csv", "'neutral' not among --class_names")


class UnreachableHubTest(BadInputCase):
    """HF_HUB_OFFLINE unset (the libraries' constants patched, as they read the variable at import), the Hub's
    endpoint pointed at a loopback address that does not serve it."""

    def online_against(self, endpoint: str) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", False))
        stack.enter_context(mock.patch.object(datasets.config, "HF_HUB_OFFLINE", False))
        stack.enter_context(mock.patch.object(huggingface_hub.constants, "ENDPOINT", endpoint))
        stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_CACHE", str(self.dir / "hub")))
        stack.callback(hub.check_repo.cache_clear)
        hub.check_repo.cache_clear()
        return stack

    def test_refused_connection(self):
        with self.online_against(f"http://127.0.0.1:{closed_port()}"):
            self.assert_one_line_exit_2(["--model", "nosuch-org/nosuch-model"], "unreachable", "not in the local")
            self.assert_one_line_exit_2(["--data", "nosuch-org/nosuch-data"], "unreachable", "HF_HUB_OFFLINE=1")

    def test_a_server_that_never_answers(self):
        with silent_server() as port, self.online_against(f"http://127.0.0.1:{port}"):
            self.assert_one_line_exit_2(["--model", "nosuch-org/nosuch-model"], "unreachable")
            self.assert_one_line_exit_2(["--task", "causal-lm", "--data", "nosuch-org/nosuch-data"], "unreachable")

    def test_a_hub_without_the_repository(self):
        with not_found_server() as port, self.online_against(f"http://127.0.0.1:{port}"):
            self.assert_one_line_exit_2(["--model", "nosuch-org/nosuch-model"], "was not found on the Hugging Face")
            self.assert_one_line_exit_2(["--data", "nosuch-org/nosuch-data"], "was not found on the Hugging Face")

    def test_a_cached_model_loads_from_its_snapshot_when_the_hub_is_unreachable(self):
        snapshot_dir = self.dir / "hub" / "models--cached-org--cached-model" / "snapshots" / ("0" * 40)
        shutil.copytree(self.tiny_bert, snapshot_dir, dirs_exist_ok=True)
        (snapshot_dir.parents[1] / "refs").mkdir(exist_ok=True)
        (snapshot_dir.parents[1] / "refs" / "main").write_text("0" * 40)
        with self.online_against(f"http://127.0.0.1:{closed_port()}"):
            from src.common.models import resolve_model_source

            self.assertEqual(resolve_model_source("cached-org/cached-model"), str(snapshot_dir))

    def test_as_a_process_with_hf_endpoint_and_no_offline_variable(self):
        """The real command line, environment and all: one line, exit 2, none of huggingface_hub's retry warnings."""
        env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(self.dir / "hf_home")}
        result = subprocess.run(
            [sys.executable, "-m", "src.training.train_model", "--model", "nosuch-org/nosuch-model",
             "--output_dir", str(self.output_dir)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("unreachable", result.stderr)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A loopback server in a thread, as a context manager yielding its port."""

    def __init__(self, server):
        self.server = server

    def __enter__(self) -> int:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def silent_server() -> _Server:
    """Accepts connections and never answers."""

    class Silent(http.server.BaseHTTPRequestHandler):
        def handle(self):
            time.sleep(60)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    return _Server(server)


def not_found_server() -> _Server:
    """Answers every request as the Hub answers for a repository that does not exist."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"error": "Repository not found"}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    return _Server(http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound))


if __name__ == "__main__":
    unittest.main()
