"""bench_distributed: the projection's arithmetic against hand-computed figures, and one tiny real run (a tiny random
BERT and the tiny Llama GGUF, 1 timed step, 1 and 2 gloo ranks over loopback) whose JSON must hold what the
benchmark promises. Timings themselves are the benchmark's business: only their presence and sign are asserted."""

import json
import os
import re
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoModelForCausalLM, BertForSequenceClassification

from src.common.gguf_import import STORE_ENV
from src.common.testing import make_tiny_bert, run_cli_captured, tiny_llama_gguf
from src.training import bench_distributed as bench
from src.training.causal_lm_config import CausalLMConfig

MB = 1e6


class ProjectionTest(unittest.TestCase):
    def test_ring_allreduce_hand_computed(self):
        # 100 MB at 10 Gbit/s is 0.08 s on the wire; a ring sends 2(N-1)/N of it: 1.5 x 0.08 = 0.12 s at N = 4.
        self.assertAlmostEqual(bench.ring_allreduce_s(100 * MB, 4, 10.0, 0.0), 0.12, places=12)
        # Latency: 2(N-1) = 6 hops per all-reduce, one all-reduce per bucket: 4 x 6 x 50 us = 1.2 ms.
        self.assertAlmostEqual(bench.ring_allreduce_s(100 * MB, 4, 10.0, 50e-6, buckets=4), 0.1212, places=12)
        self.assertAlmostEqual(bench.ring_allreduce_s(100 * MB, 2, 1.0, 0.0), 0.8, places=12)  # 2(2-1)/2 = 1
        self.assertAlmostEqual(bench.ring_allreduce_s(100 * MB, 16, 25.0, 0.0), 30 / 16 * 0.032, places=12)
        self.assertEqual(bench.ring_allreduce_s(100 * MB, 1, 10.0, 50e-6), 0.0)  # one machine all-reduces nothing

    def test_project_step_hand_computed(self):
        one = bench.StepSplit(forward_s=0.1, backward_s=0.2, optimizer_s=0.02)  # T1 = 0.32 s
        row = bench.project_step(one, 100 * MB, buckets=4, global_batch=64, micro_batch=64, machines=4, gbit_s=10.0,
                                 hop_latency_s=50e-6)  # fmt: skip
        self.assertAlmostEqual(row["compute_s"], 0.3 / 4 + 0.02)  # 0.095: the optimizer step does not shrink
        self.assertAlmostEqual(row["allreduce_s"], 0.1212)
        self.assertAlmostEqual(row["step_s_not_overlapped"], 0.2162)
        # One micro-batch per machine: all of its backward (0.2 / 4 = 0.05 s) can hide the all-reduce.
        self.assertAlmostEqual(row["overlappable_backward_s"], 0.05)
        self.assertAlmostEqual(row["step_s_overlapped"], 0.095 - 0.05 + 0.1212)
        self.assertAlmostEqual(row["efficiency_not_overlapped"], 0.32 / (4 * 0.2162))
        self.assertAlmostEqual(row["efficiency_overlapped"], 0.32 / (4 * 0.1662))
        # With accumulation only the last micro-batch's backward overlaps: 16 / 2 machines = 8 = 2 micro-batches of 4.
        accumulated = bench.project_step(one, 100 * MB, 4, global_batch=16, micro_batch=4, machines=2, gbit_s=10.0,
                                         hop_latency_s=0.0)  # fmt: skip
        self.assertAlmostEqual(accumulated["overlappable_backward_s"], 0.2 / 2 / 2)
        # A fast network: the overlapped step is the compute alone, and never above the not-overlapped one.
        fast = bench.project_step(one, 1.0, 1, 64, 64, machines=2, gbit_s=25.0, hop_latency_s=0.0)
        self.assertAlmostEqual(fast["step_s_overlapped"], fast["compute_s"])
        self.assertLessEqual(fast["step_s_overlapped"], fast["step_s_not_overlapped"])

    def test_efficiency_at_most_one_and_falls_with_machines(self):
        one = bench.StepSplit(0.05, 0.1, 0.01)
        for grad_bytes, global_batch, micro in ((90 * MB, 64, 64), (20 * MB, 16, 4), (1.0, 64, 64)):
            rows = bench.projection_table(one, grad_bytes, 4, global_batch, micro, hop_latency_s=50e-6)
            self.assertEqual(len(rows), len(bench.MACHINES) * len(bench.BANDWIDTHS_GBIT_S))
            assert_efficiency_shape(self, rows)

    def test_loopback_link(self):
        # 100 MB in 0.081 s with a 1 ms tiny all-reduce: 2 hops of 0.5 ms, 100 MB x 1 in 0.08 s = 10 Gbit/s.
        link = bench.loopback_link(100 * MB, 0.081, 0.001)
        self.assertAlmostEqual(link["hop_latency_s"], 0.0005)
        self.assertAlmostEqual(link["effective_gbit_s"], 10.0)

    def test_median_step_is_one_measured_step(self):
        splits = [bench.StepSplit(0.1, 0.3, 0.0), bench.StepSplit(0.2, 0.1, 0.0), bench.StepSplit(0.5, 0.5, 0.1)]
        self.assertEqual(bench.median_step(splits), splits[0])  # totals 0.4, 0.3, 1.1: the median is 0.4
        self.assertEqual(bench.median_step(splits[:2]), splits[1])  # even count (0.4, 0.3): the lower middle, 0.3

    def test_cpu_model_name(self):
        text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t: avx2\n"
        self.assertEqual(bench.cpu_model_name(text), "AMD EPYC 9R14")
        self.assertEqual(bench.cpu_model_name("Features: fp asimd\n"), "unknown")


def assert_efficiency_shape(test: unittest.TestCase, rows: list[dict]) -> None:
    """Efficiency in (0, 1] and non-increasing in N at every bandwidth, both overlap assumptions."""
    for kind in ("not_overlapped", "overlapped"):
        for gbit in bench.BANDWIDTHS_GBIT_S:
            series = [r[f"efficiency_{kind}"] for r in sorted(rows, key=lambda r: r["machines"]) if r["gbit_s"] == gbit]
            test.assertEqual(len(series), len(bench.MACHINES))
            for value in series:
                test.assertGreater(value, 0)
                test.assertLessEqual(value, 1 + 1e-12)
            for before, after in zip(series, series[1:]):
                test.assertLessEqual(after, before + 1e-12)
    for row in rows:
        test.assertLessEqual(row["step_s_overlapped"], row["step_s_not_overlapped"] + 1e-12)


class TinyRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(os.environ.get("TEST_TMPDIR") or tempfile.mkdtemp())
        cls.bert = make_tiny_bert(cls.tmp / "tiny_bert")
        cls.out_dir = cls.tmp / "bench"
        argv = ["--classifier_model", str(cls.bert), "--causal_lm_model", str(tiny_llama_gguf()),
                "--steps", "1", "--warmup", "1", "--allreduce_repeats", "2", "--output_dir", str(cls.out_dir)]
        with mock.patch.dict(os.environ, {"HF_HOME": str(cls.tmp / "hf_home"), STORE_ENV: str(cls.tmp / "gguf")}):
            cls.code, cls.out, cls.err = run_cli_captured(bench.main, argv)
        cls.report = json.loads((cls.out_dir / bench.RESULT_FILE).read_text()) if cls.code == 0 else None

    def setUp(self):
        self.assertEqual(self.code, 0, self.err[-3000:])

    def test_machine_and_model(self):
        machine = self.report["machine"]
        self.assertEqual(set(machine), {"cpu_model", "cores", "native_bf16", "torch", "transformers", "allocator"})
        self.assertEqual(machine["torch"], torch.__version__)
        self.assertGreaterEqual(machine["cores"], 1)
        self.assertIn("2(N-1)/N", self.report["projection_model"])
        self.assertEqual(self.report["settings"]["address"], "127.0.0.1")
        self.assertEqual(list(self.report["workloads"]), ["classification", "smollm2_lora"])

    def test_gradient_bytes_are_the_trainable_parameters_in_fp32(self):
        classifier = BertForSequenceClassification.from_pretrained(self.bert)
        full = sum(p.numel() for p in classifier.parameters())  # full fine-tuning: every weight
        workloads = self.report["workloads"]
        source = workloads["smollm2_lora"]["model_source"]  # the imported GGUF
        base = AutoModelForCausalLM.from_pretrained(source)
        rank = CausalLMConfig.__dataclass_fields__["lora_r"].default  # the job's LoRA: rank r on all-linear
        lora = sum(rank * (m.in_features + m.out_features) for name, m in base.named_modules()
                   if isinstance(m, torch.nn.Linear) and name != "lm_head")  # fmt: skip
        for name, trainable in (("classification", full), ("smollm2_lora", lora)):
            workload = workloads[name]
            self.assertEqual(workload["trainable_parameters"], trainable, name)
            self.assertEqual(workload["gradient_bytes"], 4 * trainable, name)
            self.assertEqual(sum(workload["ddp_bucket_bytes"]), workload["gradient_bytes"], name)  # DDP reduces all
            self.assertEqual(workload["ddp_buckets"], len(workload["ddp_bucket_bytes"]))
            self.assertEqual(workload["measured"]["allreduce_loopback"]["bytes"], workload["gradient_bytes"])

    def test_measurements_are_present_and_positive(self):
        for name, workload in self.report["workloads"].items():
            one, two = workload["measured"]["one_rank"], workload["measured"]["two_ranks"]
            allreduce = workload["measured"]["allreduce_loopback"]
            for value in (one["step_s"], one["forward_s"], one["backward_s"], one["optimizer_s"], two["ddp_step_s"],
                          two["compute_step_s"], allreduce["seconds"], allreduce["tiny_seconds"],
                          allreduce["effective_gbit_s"], allreduce["hop_latency_s"]):  # fmt: skip
                self.assertGreater(value, 0, name)
            self.assertEqual(len(one["step_times_s"]), 1)
            self.assertEqual(len(two["ddp_step_times_s"]), 1)
            self.assertEqual(len(allreduce["times_s"]), 2)
            self.assertAlmostEqual(one["step_s"], one["forward_s"] + one["backward_s"] + one["optimizer_s"])
            self.assertAlmostEqual(two["communication_s"], two["ddp_step_s"] - two["compute_step_s"])
            self.assertAlmostEqual(two["loopback_efficiency"], one["step_s"] / two["ddp_step_s"])
            check = workload["model_check_2_ranks_loopback"]
            self.assertAlmostEqual(check["measured_step_s"], two["ddp_step_s"])
            self.assertGreater(check["predicted_step_s_not_overlapped"], two["compute_step_s"])
            # Same global batch at both rank counts, split in half at 2 ranks.
            self.assertEqual(one["micro_batch"] * one["gradient_accumulation"], workload["global_batch"], name)
            self.assertEqual(2 * two["micro_batch"] * two["gradient_accumulation"], workload["global_batch"], name)
        lm = self.report["workloads"]["smollm2_lora"]["measured"]
        self.assertEqual((lm["one_rank"]["micro_batch"], lm["one_rank"]["gradient_accumulation"]), (4, 4))
        self.assertEqual((lm["two_ranks"]["micro_batch"], lm["two_ranks"]["gradient_accumulation"]), (4, 2))

    def test_projection_follows_the_formula(self):
        for workload in self.report["workloads"].values():
            projection = workload["projection"]
            link = workload["measured"]["allreduce_loopback"]
            floor = bench.LAN_HOP_LATENCY_US * 1e-6
            self.assertAlmostEqual(projection["hop_latency_s"], max(link["hop_latency_s"], floor))
            rows = projection["rows"]
            assert_efficiency_shape(self, rows)
            one = workload["measured"]["one_rank"]
            for row in rows:
                n, wire = row["machines"], workload["gradient_bytes"] * 8 / (row["gbit_s"] * 1e9)
                latency = workload["ddp_buckets"] * 2 * (n - 1) * projection["hop_latency_s"]
                self.assertAlmostEqual(row["allreduce_s"], 2 * (n - 1) / n * wire + latency, places=12)
                compute = (one["forward_s"] + one["backward_s"]) / n + one["optimizer_s"]
                self.assertAlmostEqual(row["compute_s"], compute)
                efficiency = one["step_s"] / (n * row["step_s_not_overlapped"])
                self.assertAlmostEqual(row["efficiency_not_overlapped"], efficiency)

    def test_last_line_and_table(self):
        lines = self.out.strip().splitlines()
        self.assertRegex(lines[-1], r"^classification_16x10gbit_efficiency: \d\.\d\d$")
        row = next(r for r in self.report["workloads"]["classification"]["projection"]["rows"]
                   if r["machines"] == 16 and r["gbit_s"] == 10)  # fmt: skip
        self.assertAlmostEqual(float(lines[-1].split(": ")[1]), row["efficiency_not_overlapped"], places=2)
        summary = self.report["summary"]
        self.assertEqual(summary["classification_16x10gbit_efficiency"], row["efficiency_not_overlapped"])
        self.assertTrue(any(re.match(r"^smollm2_lora\s+25\s+16\s", line) for line in lines))
        self.assertFalse((self.out_dir / "scratch").exists())  # nothing but the JSON is written


class BadInputTest(unittest.TestCase):
    def test_unknown_workload_is_one_line(self):
        code, out, err = run_cli_captured(bench.main, ["--workloads", "classification,nope"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("unknown workloads nope", err)

    def test_negative_steps_is_one_line(self):
        code, _, err = run_cli_captured(bench.main, ["--steps", "0"])
        self.assertEqual(code, 2)
        self.assertTrue(err.startswith("error: --steps must be >= 1"), err)


if __name__ == "__main__":
    unittest.main()
