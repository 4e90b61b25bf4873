"""Inspect the model caches and benchmark cold vs warm model loading.

    python -m src.cache_manager.cache_manager [benchmark] [--model M] [--finetune_steps N] [--store DIR]
    python -m src.cache_manager.cache_manager where | list | status MODEL [--revision R]
    python -m src.cache_manager.cache_manager import-gguf FILE.gguf | builtin:SmolLM2-135M-Instruct

benchmark (the default) times, for the base model, the first load in this process against a second one, and
for a fine-tuned model, the first request (not in the store: fine-tune briefly, store, load) against the second
(found in the store: load). It prints a table and writes <output_dir>/cache_benchmark.json.

import-gguf de-quantizes a GGUF once into a safetensors folder keyed by the file's sha256 (the causal-LM job does
the same on first use), and times a load from that folder.

Exit codes: 0 success, 1 `status` found the model not cached, 2 bad input.
"""

import argparse
import contextlib
import json
import logging
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import datasets
import torch
import transformers
from huggingface_hub import CachedRevisionInfo

from src.cache_manager.hub_cache import cache_location, cached_repos, cached_revisions, resolve_cached_revision
from src.cache_manager.store import STORE_ENV, FinetunedModelStore, key_for, model_revision
from src.common.cpu import configure_threads
from src.common.data import DEFAULT_DATA, ID2LABEL, LABEL2ID, LABEL_NAMES
from src.common.errors import CliArgumentParser, UserError, run_cli
from src.common.logging_utils import setup_logging
from src.common.gguf_import import IMPORT_FILE, import_gguf, list_imports
from src.common.gguf_import import default_store_root as default_gguf_root
from src.common.models import (
    DEFAULT_MODEL,
    is_gguf,
    is_hub_id,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model_source,
)
from src.common.paths import atomic_write_json, default_output_dir, resolve_user_path
from src.training import train_model
from src.training.config import FinetuneConfig

logger = logging.getLogger(__name__)

JOB_NAME = "cache_manager"
BENCHMARK_FILE = "cache_benchmark.json"
COMMANDS = ("benchmark", "where", "list", "status", "import-gguf")
EXIT_NOT_CACHED = 1
FINETUNE_STEPS = 30  # optimizer steps of the benchmark's fine-tune: long enough to be real, short enough to wait for
FINETUNE_EVAL_SAMPLES = 64  # validation examples the benchmark's fine-tune scores before and after


@dataclass
class LoadTiming:
    what: str
    first: str  # what the first request did
    second: str  # what the second request did
    first_s: float
    second_s: float

    @property
    def speedup(self) -> float:
        return self.first_s / self.second_s if self.second_s > 0 else float("inf")


def timed(fn: Callable[[], Any]) -> float:
    start = perf_counter()
    fn()
    return perf_counter() - start


def load_classifier(spec: str, new_head: bool = True) -> None:
    """Resolve a model source and load its tokenizer and classifier: a base model under a new head for the shipped
    sentiment classes, as the training job does; a fine-tuned one (new_head=False) with its own classes."""
    source = resolve_model_source(spec)
    load_tokenizer(source)
    if new_head:
        load_sequence_classifier(source, len(LABEL_NAMES), ID2LABEL, LABEL2ID)
    else:
        load_sequence_classifier(source)


def benchmark_base_model(spec: str) -> LoadTiming:
    first = timed(lambda: load_classifier(spec))
    second = timed(lambda: load_classifier(spec))
    return LoadTiming(f"base model {spec}", "first load in process", "second load (warm)", first, second)


def benchmark_finetuned_model(config: FinetuneConfig, store: FinetunedModelStore) -> LoadTiming:
    """First request: store miss -> fine-tune as `config` says -> put -> load. Second: store hit -> load."""
    revision = model_revision(config.model)
    key = key_for(config.model, revision, config.fingerprint())

    def fine_tune() -> tuple[Path, dict[str, Any]]:
        report = train_model.run(config)
        metadata = {
            "base_model": config.model,
            "revision": revision,
            "training_config": config.fingerprint(),
            "accuracy_after": report["after"]["metrics"]["accuracy"],
        }
        return Path(report["model_dir"]), metadata

    def request() -> None:
        load_classifier(str(store.get_or_create(key, fine_tune)), new_head=False)

    first_is_miss = store.get(key) is None
    first = timed(request)
    second = timed(request)
    hit = "store hit + load"
    first_what = f"store miss: fine-tune {config.max_steps} steps + store + load" if first_is_miss else hit
    return LoadTiming(f"fine-tuned {config.model}", first_what, hit, first, second)


def format_timings(rows: Sequence[LoadTiming]) -> str:
    width = max(len(r.what) for r in rows)
    lines = [f"{'what':<{width}}  {'first s':>8}  {'second s':>8}  {'speedup':>8}"]
    lines += [f"{r.what:<{width}}  {r.first_s:>8.2f}  {r.second_s:>8.2f}  {r.speedup:>7.1f}x" for r in rows]
    return "\n".join(lines)


def cmd_benchmark(args: argparse.Namespace) -> int:
    output_dir = resolve_user_path(args.output_dir) if args.output_dir else default_output_dir(JOB_NAME)
    threads = configure_threads()
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cache-benchmark-run-"))
        # Validates the model and data before anything is timed.
        config = FinetuneConfig(
            model=args.model,
            data=args.data,
            max_steps=args.finetune_steps,
            max_eval_samples=FINETUNE_EVAL_SAMPLES,
            eval_strategy="no",
            disable_tqdm=True,
            output_dir=workdir,
        )
        # A fresh store unless one is given, so that "first" really is the first request.
        store_root = args.store or stack.enter_context(tempfile.TemporaryDirectory(prefix="finetuned-store-"))
        store = FinetunedModelStore(resolve_user_path(store_root))
        rows = [benchmark_base_model(args.model), benchmark_finetuned_model(config, store)]
    print(format_timings(rows))
    result = {
        "model": args.model,
        "data": args.data,
        "finetune_steps": args.finetune_steps,
        "store": args.store or "(temporary)",
        "threads": threads,
        "rows": [asdict(r) | {"speedup": r.speedup} for r in rows],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    path = atomic_write_json(output_dir / BENCHMARK_FILE, result)
    logger.info("wrote %s", path)
    return 0


def _store(args: argparse.Namespace) -> FinetunedModelStore:
    return FinetunedModelStore(resolve_user_path(args.store) if args.store else None)


def _describe_revision(revision: CachedRevisionInfo, hash_chars: int = 40) -> str:
    refs = f" ({','.join(sorted(revision.refs))})" if revision.refs else ""
    return revision.commit_hash[:hash_chars] + refs


def cmd_where(args: argparse.Namespace) -> int:
    locations = cache_location() | {
        "HF_DATASETS_CACHE": str(datasets.config.HF_DATASETS_CACHE),
        "fine-tuned store": str(_store(args).root),
        "GGUF imports": str(default_gguf_root()),
    }
    width = max(map(len, locations))
    for name, path in locations.items():
        print(f"{name:<{width}}  {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    spec = args.model
    if not is_hub_id(spec):
        source = resolve_model_source(spec)
        print(f"{spec}: local model at {source}, content revision {model_revision(spec)}")
        return 0
    commit = resolve_cached_revision(spec, args.revision)
    wanted = f" at revision {args.revision}" if args.revision else ""
    if commit is None:
        print(f"{spec}: not cached{wanted} in {cache_location()['HF_HUB_CACHE']}")
        return EXIT_NOT_CACHED
    revisions = ", ".join(map(_describe_revision, cached_revisions(spec)))
    print(f"{spec}: cached{wanted} -> {commit}; cached revisions: {revisions}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print(f"hub cache {cache_location()['HF_HUB_CACHE']}:")
    repos = cached_repos(repo_type=None)
    for repo in repos:
        revisions = ", ".join(_describe_revision(r, hash_chars=12) for r in repo.revisions)
        print(f"  {repo.repo_type}/{repo.repo_id}  {repo.size_on_disk_str}  {revisions}")
    if not repos:
        print("  (empty)")

    store = _store(args)
    print(f"fine-tuned store {store.root}:")
    entries = store.list()
    for entry in entries:
        base, created = entry.metadata.get("base_model", "?"), entry.metadata.get("created", "?")
        print(f"  {entry.key[:12]}  {base}  {created}  {entry.size_bytes / 2**20:.1f} MiB")
    if not entries:
        print("  (empty)")

    imports = list_imports()
    print(f"GGUF imports {default_gguf_root()}:")
    for entry in imports:
        record = json.loads((entry / IMPORT_FILE).read_text(encoding="utf-8"))
        size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file()) / 2**20
        print(f"  {entry.name[:12]}  {Path(record['source']).name}  {size:.1f} MiB")
    if not imports:
        print("  (empty)")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    source = resolve_model_source(args.gguf)
    if not is_gguf(source):
        raise UserError(f"{args.gguf} is not a GGUF file (.gguf) or a builtin GGUF model")
    start = perf_counter()
    folder = import_gguf(source)
    import_s = perf_counter() - start
    start = perf_counter()
    load_causal_lm(str(folder))
    load_s = perf_counter() - start
    record = json.loads((folder / IMPORT_FILE).read_text(encoding="utf-8"))
    print(f"{Path(source).name}: imported at {folder}")
    print(f"  import (de-quantize once): {record['import_seconds']:.2f} s; this request: {import_s:.2f} s")
    print(f"  load from the import: {load_s:.2f} s")
    return 0


def build_parser() -> CliArgumentParser:
    parser = CliArgumentParser(prog="cache_manager", description=__doc__.split("\n")[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    options = {"allow_abbrev": False}
    store_help = f"fine-tuned store root (default: ${STORE_ENV} or <HF_HOME>/cpu-finetune/finetuned)"

    bench = commands.add_parser("benchmark", help="time first vs second model loads (default)", **options)
    bench.add_argument(
        "--model", default=DEFAULT_MODEL, help="base model: builtin:<name>, a local dir or a Hub id (%(default)s)"
    )
    bench.add_argument("--data", default=DEFAULT_DATA, help="data of the short fine-tune (%(default)s)")
    bench.add_argument(
        "--finetune_steps", type=int, default=FINETUNE_STEPS, help="optimizer steps of the fine-tune (%(default)s)"
    )
    bench.add_argument(
        "--store", help="fine-tuned store to use (default: a fresh temporary one, so that 'first' is a miss)"
    )
    bench.add_argument(
        "--output_dir",
        help=f"where {BENCHMARK_FILE} goes (default: $CPU_FINETUNE_OUTPUT_DIR, else ./outputs/{JOB_NAME})",
    )
    bench.set_defaults(handler=cmd_benchmark)

    where = commands.add_parser("where", help="print the cache and store locations", **options)
    where.add_argument("--store", help=store_help)
    where.set_defaults(handler=cmd_where)

    status = commands.add_parser("status", help="is a model cached, at which revision", **options)
    status.add_argument("model", help="builtin:<name>, a local model dir or a Hub id")
    status.add_argument("--revision", help="a branch, tag or commit hash (prefix) to look for")
    status.set_defaults(handler=cmd_status)

    listing = commands.add_parser("list", help="list hub cache repos and fine-tuned store entries", **options)
    listing.add_argument("--store", help=store_help)
    listing.set_defaults(handler=cmd_list)

    gguf = commands.add_parser("import-gguf", help="import a GGUF once into a safetensors folder", **options)
    gguf.add_argument("gguf", help="a .gguf file or a builtin GGUF model such as builtin:SmolLM2-135M-Instruct")
    gguf.set_defaults(handler=cmd_import_gguf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        raise UserError(f"unknown command {argv[0]!r}; use one of: {', '.join(COMMANDS)}")
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["benchmark", *argv]  # benchmark is the default command
    args = build_parser().parse_args(argv)
    if args.command == "benchmark" and args.finetune_steps < 1:
        raise UserError(f"--finetune_steps must be >= 1, got {args.finetune_steps}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
