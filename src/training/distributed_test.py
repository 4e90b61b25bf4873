"""Data-parallel training through the real entry point, on loopback only (127.0.0.1, and 127.0.0.2 as machine 0's
address): the launcher is torchrun, the backend gloo.

- 2 processes vs 1 at the same global batch: the same per-step losses and final weights (no dropout, same seed,
  fp32) for the classification job (full fine-tuning, a tiny BERT) and causal-LM LoRA (the tiny Llama GGUF);
- two launcher invocations as two machines of one job: the same losses again;
- rank 0 alone wrote the outputs; every rank's trained parameters were identical (the job checks it, reports it);
- a rank killed mid-run (SIGKILL) with --max_restarts 1: the group restarts from the last complete checkpoint and ends
  with the same weights as the uninterrupted run; a --resume on another world size is refused with one line;
- an unreachable machine 0, and jobs that would train at world size 1, fail with one line.

Tolerances: fp32 throughout. One process sums a step's 16 per-example losses in one reduction, two processes sum 8
each and gloo adds the two gradients: the same numbers in another order, so weights agree to float32 rounding
accumulated over the steps (1e-5 absolute at lr 1e-2 on weights of order 0.1); losses as logged (4 digits) exactly.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import torch
from safetensors.torch import load_file

from src.common import distributed
from src.common.paths import BAZEL_TEST_OUTPUTS_ENV
from src.common.testing import (
    make_tiny_bert,
    synthetic_sentiment_rows,
    tiny_llama_gguf,
    write_sst2_folder,
)

WEIGHT_TOLERANCE = 1e-5  # see the module docstring
RUN_TIMEOUT_S = 240  # a hang fails the test instead of stalling it
LOSS_LINE = re.compile(r"step (\d+)/\d+ \(epoch [0-9.]+\): loss ([0-9.]+)")


def run_job(argv: list[str], env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT_S):
    """The entry point as a user runs it (`python -m src.training.train_model ...`); returns the finished process."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                          "TORCHELASTIC", "OMP_NUM_THREADS"))}
    child_env |= {"PYTHONPATH": os.pathsep.join(sys.path), "CPU_FINETUNE_ALLOCATOR": "system"} | (env or {})
    return subprocess.run([sys.executable, "-m", "src.training.train_model", *argv], env=child_env,
                          capture_output=True, text=True, timeout=timeout)


def losses(output: str) -> list[tuple[int, str]]:
    return [(int(step), loss) for step, loss in LOSS_LINE.findall(output)]


def max_weight_difference(a: Path, b: Path) -> float:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


class DistributedClassificationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="distributed_test-", dir=os.environ.get(BAZEL_TEST_OUTPUTS_ENV)))
        model = make_tiny_bert(cls.dir / "tiny-bert")
        # 70 examples at 16 per step: 4 full steps and one of 6 per epoch (3 per process at 2 processes).
        data = write_sst2_folder(cls.dir / "data", train=synthetic_sentiment_rows(70, seed=0),
                                 dev=synthetic_sentiment_rows(32, seed=1))
        cls.argv = [
            "--model", str(model), "--data", str(data), "--max_length", "32", "--disable_tqdm", "true",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--precision", "fp32", "--ddp_timeout", "60",
        ]  # fmt: skip
        cls.one = cls.train("one", ["--nproc_per_node", "1"])
        cls.two = cls.train("two", ["--nproc_per_node", "2", "--checkpoint_every", "2"])

    @classmethod
    def train(cls, name: str, extra: list[str], env: dict[str, str] | None = None):
        out = cls.dir / name
        done = run_job([*cls.argv, *extra, "--output_dir", str(out)], env)
        assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        return out, done.stdout + done.stderr

    def test_two_processes_train_the_model_one_does(self):
        (one, one_log), (two, two_log) = self.one, self.two
        self.assertEqual(len(losses(one_log)), 10)  # 5 steps x 2 epochs, the last of each epoch partial
        self.assertEqual(losses(two_log), losses(one_log))
        difference = max_weight_difference(one / "model" / "model.safetensors", two / "model" / "model.safetensors")
        self.assertLess(difference, WEIGHT_TOLERANCE)
        metrics_one, metrics_two = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
        self.assertEqual(metrics_two["train"]["steps"], metrics_one["train"]["steps"])
        self.assertAlmostEqual(metrics_two["after"]["loss"], metrics_one["after"]["loss"], places=5)
        self.assertEqual(metrics_one["distributed"], {"world_size": 1})

    def test_ranks_agree_and_only_rank_zero_wrote(self):
        two, log = self.two
        report = json.loads((two / "metrics.json").read_text())["distributed"]
        self.assertEqual(report["world_size"], 2)
        self.assertEqual(report["machines"], 1)
        self.assertRegex(report["parameters_sha256"], "^[0-9a-f]{64}$")
        self.assertIn("trainable parameters identical on all 2 processes", (two / "train.log").read_text())
        self.assertEqual(log.count("metric       before    after"), 1)  # one summary table, rank 0's
        written = {p.name for p in two.iterdir()}
        self.assertEqual(written, {"model", "metrics.json", "eval_history.json", "training_curves.png", "train.log",
                                   "checkpoints"})
        checkpoint = two / "checkpoints" / "checkpoint-10"
        self.assertTrue({"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()})

    def test_two_launchers_as_two_machines(self):
        port = str(distributed.free_port())
        common = [*self.argv, "--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.2",
                  "--master_port", port]
        env = {"PYTHONPATH": os.pathsep.join(sys.path), "CPU_FINETUNE_ALLOCATOR": "system"}
        machine1 = subprocess.Popen(
            [sys.executable, "-m", "src.training.train_model", *common, "--node_rank", "1",
             "--output_dir", str(self.dir / "machine1")],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        machine0 = run_job([*common, "--node_rank", "0", "--output_dir", str(self.dir / "machine0")])
        machine1_output, _ = machine1.communicate(timeout=RUN_TIMEOUT_S)
        self.assertEqual(machine0.returncode, 0, machine0.stderr[-3000:])
        self.assertEqual(machine1.returncode, 0, machine1_output[-3000:])
        self.assertEqual(losses(machine0.stdout + machine0.stderr), losses(self.one[1]))
        report = json.loads((self.dir / "machine0" / "metrics.json").read_text())["distributed"]
        self.assertEqual((report["world_size"], report["machines"]), (2, 2))
        self.assertFalse((self.dir / "machine1").exists())  # machine 1 holds no rank 0: it wrote nothing
        difference = max_weight_difference(self.one[0] / "model" / "model.safetensors",
                                           self.dir / "machine0" / "model" / "model.safetensors")
        self.assertLess(difference, WEIGHT_TOLERANCE)

    def test_a_killed_rank_restarts_from_the_last_checkpoint_to_the_same_weights(self):
        out, log = self.train("killed", ["--nproc_per_node", "2", "--checkpoint_every", "2", "--max_restarts", "1"],
                              env={distributed.KILL_RANK_AT_STEP_ENV: "1:3"})
        self.assertIn("resuming from", log)  # the restarted group continued from checkpoint-2
        self.assertIn("checkpoint-2", log)
        self.assertEqual(log.count("metric       before    after"), 1)
        difference = max_weight_difference(self.two[0] / "model" / "model.safetensors",
                                           out / "model" / "model.safetensors")
        self.assertEqual(difference, 0.0)  # the same processes replaying the same steps: bit for bit
        killed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (out, self.two[0]))
        self.assertEqual(killed["after"]["metrics"], uninterrupted["after"]["metrics"])

    def test_a_killed_rank_without_restarts_is_one_line(self):
        done = run_job([*self.argv, "--nproc_per_node", "2", "--output_dir", str(self.dir / "dead")],
                       env={distributed.KILL_RANK_AT_STEP_ENV: "1:2"})
        self.assertEqual(done.returncode, 1)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        self.assertIn("was killed by SIGKILL; the job stopped", errors[-1])
        self.assertNotIn("Traceback", done.stderr)

    def test_resume_on_another_world_size_is_refused(self):
        out = self.dir / "resume-elsewhere"
        self.train("resume-elsewhere", ["--nproc_per_node", "2", "--checkpoint_every", "4", "--max_steps", "4"])
        done = run_job([*self.argv, "--nproc_per_node", "1", "--checkpoint_every", "4", "--resume",
                        "--output_dir", str(out)])
        self.assertEqual(done.returncode, 2)
        self.assertRegex(done.stderr.strip(), r"^error: .*checkpoint-4 was saved by a job of 2 processes; resume it "
                                              r"with 2")

    def test_an_unreachable_machine_fails_in_one_line_within_the_timeout(self):
        port = str(distributed.free_port())  # nothing listens there: machine 0 never started
        started = time.monotonic()
        done = run_job([*self.argv, "--nnodes", "2", "--node_rank", "1", "--master_addr", "127.0.0.2",
                        "--master_port", port, "--ddp_timeout", "3", "--output_dir", str(self.dir / "alone")])
        seconds = time.monotonic() - started
        self.assertEqual(done.returncode, 1)
        self.assertRegex(done.stderr.splitlines()[-1], r"^error: machine 1 could not form the group of 2 machines "
                                                       r"at 127\.0\.0\.2:\d+ within --ddp_timeout 3 s")
        self.assertEqual([line for line in done.stderr.splitlines() if not line[:2].isdigit()],
                         [done.stderr.splitlines()[-1]])  # besides timestamped log lines, that line only
        self.assertLess(seconds, 60)  # the interpreter start and imports, plus a few timeouts of 3 s

    def test_world_size_one_where_more_was_asked_fails(self):
        done = run_job([*self.argv, "--nproc_per_node", "2", "--use_cpu", "false",
                        "--output_dir", str(self.dir / "cpu-false")])
        self.assertEqual(done.returncode, 2)
        self.assertRegex(done.stderr.strip().splitlines()[-1], r"^error: --use_cpu false: on 2 processes each would "
                                                               r"train its own model")
        # The same under PyTorch's own launcher, around the entry point: every rank checks the world it joined.
        env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": os.pathsep.join(sys.path)}
        plain = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(distributed.free_port()), "-m", "src.training.train_model", *self.argv, "--use_cpu", "false",
             "--output_dir", str(self.dir / "cpu-false-torchrun")],
            env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )
        self.assertNotEqual(plain.returncode, 0)
        self.assertIn("error: the Trainer would train at world size 1 in a job of 2 processes", plain.stderr)
        self.assertFalse((self.dir / "cpu-false-torchrun" / "model").exists())


class DistributedCausalLMTest(unittest.TestCase):
    def test_lora_on_two_processes_matches_one(self):
        base = Path(tempfile.mkdtemp(prefix="distributed_lm-", dir=os.environ.get(BAZEL_TEST_OUTPUTS_ENV)))
        argv = ["--task", "causal-lm", "--model", str(tiny_llama_gguf()), "--max_steps", "4", "--learning_rate",
                "2e-3", "--max_eval_samples", "8", "--max_new_tokens", "4", "--disable_tqdm", "true",
                "--precision", "fp32", "--logging_steps", "1"]
        runs = {}
        for n in (1, 2):
            done = run_job([*argv, "--nproc_per_node", str(n), "--output_dir", str(base / str(n))])
            self.assertEqual(done.returncode, 0, done.stderr[-3000:])
            runs[n] = done.stdout + done.stderr
        self.assertEqual(len(losses(runs[1])), 4)  # 4 x 4 sequences per step: 4 x 2 on each of 2 processes
        self.assertEqual(losses(runs[2]), losses(runs[1]))
        difference = max_weight_difference(base / "1" / "adapter" / "adapter_model.safetensors",
                                           base / "2" / "adapter" / "adapter_model.safetensors")
        self.assertLess(difference, WEIGHT_TOLERANCE)
        self.assertEqual(json.loads((base / "2" / "metrics.json").read_text())["distributed"]["world_size"], 2)

    def test_qlora_stays_single_process(self):
        done = run_job(["--task", "causal-lm", "--model", str(tiny_llama_gguf()), "--method", "qlora",
                        "--nproc_per_node", "2", "--output_dir", tempfile.mkdtemp()])
        self.assertEqual(done.returncode, 2)
        self.assertRegex(done.stderr.strip(), r"^error: --method qlora trains in one process only")


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main()
