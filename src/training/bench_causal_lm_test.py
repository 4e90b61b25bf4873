"""bench_causal_lm end to end on the tiny Llama GGUF: every variant runs in its own process, the perplexity mode runs the
real job, and the output contract holds (JSON, ratios, last line). Timings are the benchmark's business, not
asserted here."""

import json
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from src.common.gguf_import import STORE_ENV
from src.common.testing import run_cli_captured, tiny_llama_gguf
from src.training import bench_causal_lm


class BenchCausalLMTest(unittest.TestCase):
    def test_variants_and_perplexity_mode(self):
        tmp = Path(os.environ.get("TEST_TMPDIR") or tempfile.mkdtemp())
        data = tmp / "tiny_alpaca.json"
        data.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": f"{i} {i} {i}."}
                                    for i in range(40)]))  # fmt: skip
        out_dir = tmp / "bench"
        variants = ["lora_fp32", "lora_bf16", "qlora_nf4", "full_fp32"]  # one process each: keep the test short
        argv = ["--model", str(tiny_llama_gguf()), "--seq_len", "32", "--micro_batch", "2", "--steps", "1",
                "--variants", ",".join(variants),
                "--perplexity", "--alpaca", str(data), "--output_dir", str(out_dir),
                "--perplexity_args", "--max_new_tokens 4 --learning_rate 2e-3"]  # fmt: skip
        with mock.patch.dict(os.environ, {"HF_HOME": str(tmp / "hf_home"), STORE_ENV: str(tmp / "gguf")}):
            code, out, err = run_cli_captured(bench_causal_lm.main, argv)
        self.assertEqual(code, 0, err[-3000:])

        report = json.loads((out_dir / bench_causal_lm.RESULT_FILE).read_text())
        self.assertEqual([v["variant"] for v in report["variants"]], variants)
        by_name = {v["variant"]: v for v in report["variants"]}
        for variant in report["variants"]:
            self.assertGreater(variant["tokens_per_second"], 0)
            self.assertGreater(variant["peak_rss_mib"], 0)
            self.assertGreater(variant["roof_gflops_alongside"], 0)
            self.assertAlmostEqual(variant["roof_fraction"], variant["gflops"] / variant["roof_gflops_alongside"])
        self.assertGreater(by_name["full_fp32"]["flops_per_token"], by_name["lora_fp32"]["flops_per_token"])
        self.assertLess(by_name["lora_fp32"]["trainable_parameters"], by_name["full_fp32"]["trainable_parameters"])
        self.assertGreater(report["roof_gflops"]["fp32"]["roof"], 0)
        self.assertIn("qlora_nf4_rss_vs_lora", report["summary"])
        self.assertLess(report["perplexity"]["after"]["perplexity"], report["perplexity"]["before"]["perplexity"])

        lines = out.strip().splitlines()
        self.assertRegex(lines[-1], r"^lora_bf16_roof_fraction: \d+\.\d{3}$")
        self.assertAlmostEqual(float(lines[-1].split(": ")[1]), by_name["lora_bf16"]["roof_fraction"], places=3)


if __name__ == "__main__":
    unittest.main()
