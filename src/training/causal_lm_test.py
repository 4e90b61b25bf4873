"""The causal-LM job end to end on the repository's tiny Llama GGUF (src/common/testdata), through the real entry
point (train_model).

Asserts: held-out loss falls; LoRA weights changed while the base did not (the merged model differs from the base
by exactly the adapter's update); save -> load -> generate reproduces the trained model's generations and logits;
the QLoRA (4-bit base) and full fine-tuning paths train; bad input fails with one line before any training.
"""

import gc
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from src.common.cpu import autocast
from src.common.gguf_import import STORE_ENV
from src.common.models import load_causal_lm, local_model_dir
from src.common.testing import run_cli_captured, tiny_llama_gguf
from src.training import causal_lm, generate, train_model
from src.training.causal_lm_config import CausalLMConfig
from src.training.config import LOG_FILE

FAST = ["--max_steps", "12", "--learning_rate", "2e-3", "--warmup_steps", "0", "--max_eval_samples", "24",
        "--max_new_tokens", "8", "--disable_tqdm", "true", "--seed", "3"]  # fmt: skip


class CausalLMTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.env = mock.patch.dict(os.environ, {"HF_HOME": str(cls.tmp / "hf_home"), STORE_ENV: str(cls.tmp / "gguf")})
        cls.env.start()
        cls.model = str(tiny_llama_gguf())

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        shutil.rmtree(cls.tmp)

    def train(self, name: str, *flags: str) -> dict:
        output_dir = self.tmp / name
        argv = ["--task", "causal-lm", "--model", self.model, "--output_dir", str(output_dir), *FAST, *flags]
        code, out, err = run_cli_captured(train_model.main, argv)
        self.assertEqual(code, 0, err[-2000:])
        self.assertIn("perplexity", out)
        self.assert_concise_output(out, err, output_dir)
        return json.loads((output_dir / causal_lm.METRICS_FILE).read_text())

    def assert_concise_output(self, out: str, err: str, output_dir: Path) -> None:
        """No Trainer log dicts and no library progress bars (GGUF import, weights); the loss as log lines with
        tokens/s (--disable_tqdm true), and in the run's log file."""
        for text in (out, err):
            self.assertNotIn("{'", text)
        self.assertNotIn("%|", err)
        self.assertRegex(err, r"step 2/12 \(epoch [\d.]+\): loss [\d.]+, .* \d+ tokens/s")
        log = (output_dir / LOG_FILE).read_text()
        self.assertIn("INFO src.common.training_logs: step 12/12", log)

    def assert_learned(self, report: dict) -> None:
        self.assertLess(report["after"]["loss"], report["before"]["loss"] - 0.1)
        losses = [entry["loss"] for entry in report["train"]["log_history"] if "loss" in entry]
        self.assertLess(losses[-1], losses[0])
        self.assertGreater(report["train"]["tokens_per_second"], 0)

    def test_lora_trains_only_the_adapter_and_round_trips(self):
        # fp32, so that "the merged model is exactly base + B @ A" and the round trip compare exact arithmetic.
        report = self.train("lora", "--merge_adapter", "true", "--precision", "fp32")
        self.assert_learned(report)
        adapter_dir, merged_dir = Path(report["saved"]["adapter"]), Path(report["saved"]["merged"])
        self.assertLess(report["adapter_bytes"], 1_000_000)  # the adapter alone, not the model

        # LoRA weights changed: B starts at zero, so a trained B is non-zero.
        adapter = load_file(adapter_dir / "adapter_model.safetensors")
        b_weights = [t for name, t in adapter.items() if "lora_B" in name]
        self.assertTrue(b_weights and all(t.abs().max() > 0 for t in b_weights))

        # The base did not change: merged = base + (alpha/r) * B @ A for adapted layers, = base elsewhere.
        base = AutoModelForCausalLM.from_pretrained(report["model_source"]).state_dict()
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).state_dict()
        scale = report["config"]["lora_alpha"] / report["config"]["lora_r"]
        adapted = 0
        for name, weight in base.items():
            module = name.removesuffix(".weight")
            a = next((t for k, t in adapter.items() if k.endswith(f"{module}.lora_A.weight")), None)
            if a is None:
                torch.testing.assert_close(merged[name], weight, rtol=0, atol=0, msg=name)
                continue
            b = next(t for k, t in adapter.items() if k.endswith(f"{module}.lora_B.weight"))
            torch.testing.assert_close(merged[name], weight + scale * (b @ a), rtol=1e-5, atol=1e-6, msg=name)
            adapted += 1
        self.assertEqual(adapted, len(b_weights))

        # Save -> load -> generate: the reloaded adapter generates what the trained model generated, and the
        # adapter on its base and the merged model give the same logits.
        prompts = [item["prompt"] for item in report["generations"]]
        reloaded, tokenizer = generate.load_for_inference(str(adapter_dir))
        again = causal_lm.generate(reloaded, tokenizer, prompts, max_new_tokens=8, precision="fp32")
        self.assertEqual([g["completion"] for g in again], [item["after"] for item in report["generations"]])
        merged_model, _ = generate.load_for_inference(str(merged_dir))
        ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
        with torch.inference_mode():
            torch.testing.assert_close(merged_model(ids).logits, reloaded(ids).logits, rtol=1e-5, atol=1e-5)

        code, out, err = run_cli_captured(generate.main, ["--model", str(adapter_dir), "--prompt", prompts[0],
                                                          "--max_new_tokens", "8"])
        self.assertEqual(code, 0, err)
        self.assertIn(report["generations"][0]["after"], out)

    def test_qlora_trains_on_a_4bit_base(self):
        report = self.train("qlora", "--method", "qlora")
        self.assert_learned(report)
        self.assertIsNotNone(report["saved"]["adapter"])

    def test_a_4bit_base_does_not_keep_its_checkpoint_file_mapped(self):
        # Quantizing reads every fp32 weight of the memory-mapped checkpoint; were the embeddings still to point
        # into it, the whole file would stay resident (peak RSS). An fp32 load maps it (zero-copy): the check can
        # tell the difference.
        source = local_model_dir(self.model)
        files = [os.path.realpath(f) for f in Path(source).glob("*.safetensors")]
        self.assertTrue(files)

        def mapped() -> bool:
            maps = Path("/proc/self/maps").read_text()
            return any(f in maps for f in files)

        fp32 = load_causal_lm(source)
        self.assertTrue(mapped())
        del fp32
        gc.collect()
        nf4 = load_causal_lm(source, quantization="nf4")
        self.assertFalse(mapped())
        self.assertTrue(any(p.dtype == torch.uint8 for p in nf4.parameters()))

    def test_lora_bf16_keeps_the_frozen_base_in_bf16_and_trains_fp32_adapters(self):
        # prepare_model is what the job uses for --precision bf16; called directly so that the dtype layout is
        # checked on any CPU (without native bf16 the arithmetic is only slower).
        source = local_model_dir(self.model)
        config = CausalLMConfig(model=self.model, output_dir=str(self.tmp / "unused"))
        model, _ = causal_lm.prepare_model(config, source, "bf16")
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
        self.assertTrue(trainable and all("lora_" in name for name in trainable))
        self.assertEqual({p.dtype for p in trainable.values()}, {torch.float32})
        self.assertEqual({p.dtype for p in frozen.values()}, {torch.bfloat16})

        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        # prepare_model turns off peft's cast of LoRA inputs to the fp32 adapters' dtype (autocast casts them back
        # to bf16 anyway): the logits must be exactly those with peft's casting.
        lora_layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        self.assertFalse(any(layer.cast_input_dtype_enabled for layer in lora_layers))
        model.eval()
        with torch.no_grad(), autocast("bf16"):
            fast = model(input_ids=ids).logits
            for layer in lora_layers:
                layer.cast_input_dtype_enabled = True
            reference = model(input_ids=ids).logits
            for layer in lora_layers:
                layer.cast_input_dtype_enabled = False
        self.assertTrue(torch.equal(fast, reference))
        model.train()
        for _ in range(2):  # lora_B starts at zero: the second step is the first to move lora_A
            with autocast("bf16"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        for name, p in model.named_parameters():
            changed = not torch.equal(p.detach(), before[name])
            self.assertEqual(changed, name in trainable, name)

    def test_full_fine_tuning_trains_every_weight(self):
        report = self.train("full", "--method", "full", "--learning_rate", "1e-3")
        self.assert_learned(report)
        self.assertEqual(report["parameters"]["trainable"], report["parameters"]["total"])
        self.assertTrue((Path(report["saved"]["model"]) / "model.safetensors").is_file())

    def test_bad_input_fails_with_one_line_before_training(self):
        bad = self.tmp / "bad.jsonl"
        bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
        cases = {
            ("--data", str(bad)): "bad.jsonl:2: missing field 'output'",
            ("--method", "dpo"): "invalid choice",
            ("--lora_r", "0"): "--lora_r must be >= 1",
            ("--method", "qlora", "--merge_adapter", "true"): "--merge_adapter with --method qlora",
            ("--model", str(self.tmp / "missing.gguf")): "does not exist",
        }
        for flags, message in cases.items():
            output_dir = self.tmp / "bad_run"
            argv = ["--task", "causal-lm", "--model", self.model, "--output_dir", str(output_dir), *FAST, *flags]
            code, out, err = run_cli_captured(train_model.main, argv)
            self.assertEqual(code, 2, flags)
            self.assertIn(message, err, flags)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertFalse((output_dir / causal_lm.METRICS_FILE).exists())


if __name__ == "__main__":
    unittest.main()
