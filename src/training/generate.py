"""Generate with a fine-tuned causal LM: a base model plus a LoRA adapter, a merged model, or a full model.

    bazel run //src/training:generate -- --model outputs/causal_lm/adapter --prompt "What is 38 plus 47?"
    bazel run //src/training:generate -- --model builtin:SmolLM2-135M-Instruct --prompt "Hi"   (the base alone)

An adapter folder (adapter_config.json) names its base in cpu_finetune_job.json, written by the causal-LM job;
--base overrides it. Prompts go through the tokenizer's chat template when it has one. Greedy decoding by default.
"""

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.common.cpu import configure_threads, cpu_flags, resolve_precision
from src.common.errors import CliArgumentParser, UserError, run_cli
from src.common.logging_utils import setup_logging, stray_progress_bars_hidden
from src.common.models import load_causal_lm, load_tokenizer, local_model_dir, resolve_model_source
from src.common.paths import resolve_user_path
from src.training.causal_lm import JOB_FILE, ensure_pad_token, generate

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # peft's marker of an adapter folder


def adapter_base(adapter_dir: Path) -> str:
    """The base model spec an adapter was trained on, from the job record saved beside it."""
    record = adapter_dir / JOB_FILE
    if not record.is_file():
        raise UserError(f"adapter {adapter_dir} has no {JOB_FILE}; pass its base model with --base")
    return json.loads(record.read_text(encoding="utf-8"))["base_model"]


def load_for_inference(model: str, base: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model ready to generate: an adapter folder on its base (merged in memory), or any model source."""
    path = resolve_user_path(model)
    if (path / ADAPTER_CONFIG).is_file():
        with stray_progress_bars_hidden():  # a GGUF base's import: its de-quantizing bar
            base_source = local_model_dir(resolve_model_source(base or adapter_base(path)))
        tokenizer = load_tokenizer(str(path))  # saved with the adapter, pad token included
        loaded = PeftModel.from_pretrained(load_causal_lm(base_source), path).merge_and_unload()
    else:
        with stray_progress_bars_hidden():
            source = local_model_dir(resolve_model_source(model))
        tokenizer = load_tokenizer(source)
        loaded = load_causal_lm(source)
    ensure_pad_token(tokenizer)
    loaded.eval()
    return loaded, tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = CliArgumentParser(prog="generate", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model", required=True,
                        help="An adapter folder (<output_dir>/adapter), a merged or full model folder, a .gguf file, "
                        "builtin:SmolLM2-135M-Instruct or a Hub id.")
    parser.add_argument("--base", help="Base model of an adapter (default: the one recorded when it was trained).")
    parser.add_argument("--prompt", action="append", required=True, help="A user prompt; repeat for several.")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Tokens generated per prompt.")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="bf16 autocast where the CPU has native bf16 (auto), or force one.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    precision = resolve_precision(args.precision, cpu_flags())
    configure_threads()
    model, tokenizer = load_for_inference(args.model, args.base)
    with torch.inference_mode():
        for item in generate(model, tokenizer, args.prompt, args.max_new_tokens, precision):
            print(f"> {item['prompt']}\n{item['completion']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
