"""Benchmark of data-parallel training (DistributedDataParallel on gloo): measured here, projected to N machines.

    bazel run //src/training:bench_distributed                              # both workloads (several minutes on 2 cores)
    bazel run //src/training:bench_distributed -- --workloads classification --steps 10

Two workloads, each on the same global batch at every rank count: `classification` (the default classification job:
all-MiniLM-L6-v2, full fine-tuning, 64 examples of the shipped sentiment set per optimizer step, max_length 128, no
dropout, eager attention, fused AdamW at lr 1e-4, bf16 autocast where the CPU has native bf16) and `smollm2_lora`
(SmolLM2-135M-Instruct with the causal-LM job's LoRA, 16 sequences of 256 random tokens per step: micro-batches of 4,
accumulated). What is measured, each rank count in processes of its own, over loopback (127.0.0.1) only:

- the step time (forward, backward, gradient clipping, optimizer) at 1 rank with every usable core;
- at 2 ranks (half the cores each, half the global batch each), DDP steps, which include gloo's all-reduce of the
  gradients, alternating with the same steps under DDP's no_sync() (compute only): the difference is communication;
- the gradient bytes a step all-reduces (trainable parameters x their 4-byte fp32 gradients) and DDP's buckets;
- gloo's all-reduce over loopback at 2 ranks of exactly those bytes, and of 4 bytes (latency).

From those it projects, for 2, 4, 8 and 16 machines like this one at 1, 10 and 25 Gbit/s, the step time with the
all-reduce not overlapped and overlapped with the last backward pass, and the scaling efficiency T1 / (N x T_N): the
model is in PROJECTION_MODEL below and in the JSON. Measured figures are marked `measured`, projected ones `projection`.

Writes <output_dir>/bench_distributed.json; the last line printed is `<workload>_16x10gbit_efficiency: <fraction>`
(not overlapped; classification when it ran).
"""

from src.common.allocator import allocator_in_use, restart_with_fast_allocator

if __name__ == "__main__":  # before the heavy imports below: the process it replaces should not pay for them
    restart_with_fast_allocator()

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Any

import torch
import torch.distributed as dist
import transformers

from src.common.cpu import CPUINFO_PATH, autocast, configure_threads, cpu_flags, resolve_precision, supports_bf16
from src.common.data import DEFAULT_DATA, ID2LABEL, LABEL2ID, LABEL_NAMES, PaddingCollator, load_data, tokenize
from src.common.errors import CliArgumentParser, UserError, run_cli
from src.common.logging_utils import setup_logging
from src.common.models import (
    DEFAULT_CAUSAL_LM,
    DEFAULT_MODEL,
    load_sequence_classifier,
    load_tokenizer,
    local_model_dir,
    resolve_model_source,
)
from src.common.paths import atomic_write_json, default_output_dir, resolve_user_path

logger = logging.getLogger(__name__)

JOB_NAME = "bench_distributed"
RESULT_FILE = "bench_distributed.json"
MODULE = "src.training.bench_distributed"  # the workers run this module again, one process per rank

# --- Workloads: the jobs' own defaults (src/training/config.py, causal_lm_config.py) ---
WORKLOADS: dict[str, dict[str, Any]] = {
    "classification": {
        "global_batch": 64,  # examples per optimizer step, whatever the rank count
        "micro_batch": 64,  # at most this many examples per forward/backward: the job's batch, no accumulation
        "max_length": 128,  # tokens; batches are padded to their longest example
        "learning_rate": 1e-4,
        "steps": 20,  # timed optimizer steps per mode (a step is ~0.2 s on 2 cores)
        "warmup": 3,  # untimed steps first (allocations, oneDNN kernel selection, DDP's bucket rebuild)
    },
    "smollm2_lora": {
        "global_batch": 16,  # sequences per optimizer step: 4 x accumulation 4 at 1 rank, 4 x 2 at 2 ranks
        "micro_batch": 4,  # sequences per forward/backward
        "seq_len": 256,  # tokens per sequence (random ids, as bench_causal_lm)
        "learning_rate": 2e-4,  # the causal-LM job's LoRA default
        "steps": 5,  # timed optimizer steps per mode (a step is ~10 s on 2 cores)
        "warmup": 1,
    },
}
MAX_GRAD_NORM = 1.0  # gradient clipping, as TrainingArguments does by default (part of the timed optimizer phase)
DATA_SEED = 0  # batch order (classification) and token ids (smollm2_lora): the same batches at 1 and 2 ranks

# --- Distributed setup ---
LOOPBACK = "127.0.0.1"  # every rank on this machine; never another address
GLOO_IFNAME = "lo"  # GLOO_SOCKET_IFNAME for the workers: gloo's sockets on the loopback interface
TWO_RANKS = 2
DIST_TIMEOUT_S = 120  # bound on rendezvous and every collective (PyTorch's default is 30 minutes)
BUCKET_CAP_MB = 25  # DDP's default bucket size, MiB
ALLREDUCE_REPEATS = 10  # timed all-reduces of a workload's gradient bytes (median)
ALLREDUCE_WARMUP = 2  # untimed all-reduces first (gloo's buffers, page faults)
LATENCY_REPEATS = 50  # timed all-reduces of a 4-byte tensor (median): the latency of one all-reduce
LATENCY_NUMEL = 1  # fp32 elements of the latency probe

# --- Projection ---
MACHINES = (2, 4, 8, 16)  # machines like this one, one rank each
BANDWIDTHS_GBIT_S = (1.0, 10.0, 25.0)  # network bandwidth per machine, Gbit/s (1e9 bits/s)
# Per-hop latency floor on a LAN, microseconds: a TCP message through NIC, wire and switch. Loopback has none of
# these, so the projection uses max(this, the per-hop latency measured over loopback, i.e. gloo's own cost).
LAN_HOP_LATENCY_US = 50.0
SUMMARY_MACHINES, SUMMARY_GBIT_S = 16, 10.0  # the figure of the last line
PROJECTION_MODEL = (
    "Machines like this one, one rank each, the global batch split evenly (N x 1/N of the examples per step). "
    "compute_N = (forward_1 + backward_1) / N + optimizer_1: forward and backward scale linearly with the examples "
    "per machine, the optimizer step (clipping, fused AdamW over every trainable weight) does not shrink. "
    "allreduce_N = 2(N-1)/N x gradient_bytes x 8 / bandwidth + buckets x 2(N-1) x hop_latency (ring all-reduce: "
    "reduce-scatter then all-gather, each N-1 hops, one all-reduce per DDP bucket); hop_latency = max(LAN floor, "
    "loopback per-hop latency measured = tiny all-reduce / 2(2-1)). Not overlapped: step_N = compute_N + "
    "allreduce_N. Overlapped (DDP all-reduces buckets during the backward of the last micro-batch): step_N = compute_N "
    "- last_backward_N + max(last_backward_N, allreduce_N), last_backward_N = backward_1 / N / micro_batches_N. "
    "Efficiency = T1 / (N x step_N), T1 = the measured 1-rank step. Compute and bandwidth are not measured on N "
    "machines: on a 2-core machine the measured 2-rank figures also carry each rank's fixed per-step overhead and "
    "ranks competing with gloo's threads for the same cores, which separate machines would not."
)


# --------------------------------------------------------------------------------------------------------------
# The projection: pure functions over the measurements.


@dataclass(frozen=True)
class StepSplit:
    """One optimizer step's time, seconds, by phase (sums over its micro-batches)."""

    forward_s: float
    backward_s: float
    optimizer_s: float  # gradient clipping, optimizer.step, zero_grad

    @property
    def step_s(self) -> float:
        return self.forward_s + self.backward_s + self.optimizer_s


def ring_allreduce_s(
    gradient_bytes: float, machines: int, gbit_s: float, hop_latency_s: float, buckets: int = 1
) -> float:
    """Seconds of a ring all-reduce of `gradient_bytes` over `machines` at `gbit_s` (1e9 bits/s) per machine.

    Each machine sends and receives 2(N-1)/N of the bytes (reduce-scatter, then all-gather) in 2(N-1) hops; a hop
    costs `hop_latency_s` once per all-reduce, and DDP runs one all-reduce per bucket.
    """
    if machines < 1 or gbit_s <= 0 or buckets < 1:
        raise ValueError(f"need machines >= 1, gbit_s > 0, buckets >= 1; got {machines}, {gbit_s}, {buckets}")
    if machines == 1:
        return 0.0
    hops = 2 * (machines - 1)
    return hops / machines * gradient_bytes * 8 / (gbit_s * 1e9) + buckets * hops * hop_latency_s


def micro_batches(global_batch: int, machines: int, micro_batch: int) -> int:
    """Micro-batches each machine runs per optimizer step (at least 1) when the global batch is split evenly."""
    return max(1, math.ceil(global_batch / machines / micro_batch))


def project_step(
    one_rank: StepSplit,
    gradient_bytes: float,
    buckets: int,
    global_batch: int,
    micro_batch: int,
    machines: int,
    gbit_s: float,
    hop_latency_s: float,
) -> dict[str, float]:
    """Projected step time and efficiency on `machines` machines, from the 1-rank split (see PROJECTION_MODEL)."""
    compute = (one_rank.forward_s + one_rank.backward_s) / machines + one_rank.optimizer_s
    last_backward = one_rank.backward_s / machines / micro_batches(global_batch, machines, micro_batch)
    allreduce = ring_allreduce_s(gradient_bytes, machines, gbit_s, hop_latency_s, buckets)
    serial = compute + allreduce
    overlapped = compute - last_backward + max(last_backward, allreduce)
    return {
        "machines": machines, "gbit_s": gbit_s, "compute_s": compute, "allreduce_s": allreduce,
        "overlappable_backward_s": last_backward, "step_s_not_overlapped": serial, "step_s_overlapped": overlapped,
        "efficiency_not_overlapped": one_rank.step_s / (machines * serial),
        "efficiency_overlapped": one_rank.step_s / (machines * overlapped),
    }  # fmt: skip


def projection_table(
    one_rank: StepSplit,
    gradient_bytes: float,
    buckets: int,
    global_batch: int,
    micro_batch: int,
    hop_latency_s: float,
    machines: Sequence[int] = MACHINES,
    bandwidths: Sequence[float] = BANDWIDTHS_GBIT_S,
) -> list[dict[str, float]]:
    """project_step for every bandwidth x machine count."""
    return [
        project_step(one_rank, gradient_bytes, buckets, global_batch, micro_batch, n, gbit, hop_latency_s)
        for gbit in bandwidths
        for n in machines
    ]


def loopback_link(gradient_bytes: float, allreduce_s: float, tiny_allreduce_s: float) -> dict[str, float]:
    """Loopback's per-hop latency and effective bandwidth from 2-rank all-reduces of `gradient_bytes` and of ~0 bytes.

    At 2 ranks a ring all-reduce is 2 hops carrying 2(2-1)/2 = 1x the bytes.
    """
    hops = 2 * (TWO_RANKS - 1)
    transfer = allreduce_s - tiny_allreduce_s if allreduce_s > tiny_allreduce_s else allreduce_s
    return {
        "hop_latency_s": tiny_allreduce_s / hops,
        "effective_gbit_s": hops / TWO_RANKS * gradient_bytes * 8 / transfer / 1e9,
    }


def median_step(splits: Sequence[StepSplit]) -> StepSplit:
    """The step whose total time is the median (the lower middle of an even count), with its own split."""
    ordered = sorted(splits, key=lambda s: s.step_s)
    return ordered[(len(ordered) - 1) // 2]


# --------------------------------------------------------------------------------------------------------------
# The workers: one process per rank.


@dataclass
class Workload:
    """A built workload in a worker: the model to train and the batches of every step."""

    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    precision: str
    batches: Callable[[int, int, int], list[dict[str, torch.Tensor]]]  # (step, rank, world) -> micro-batches


def rank_slice(global_batch: int, rank: int, world: int, micro_batch: int) -> list[range]:
    """This rank's share of a global batch (indices into it), cut into micro-batches."""
    per_rank = global_batch // world
    micro = min(micro_batch, per_rank)
    start = rank * per_rank
    return [range(s, s + micro) for s in range(start, start + per_rank, micro)]


def build_classification(spec: dict[str, Any]) -> Workload:
    """The default classification job's model (full fine-tuning) and real batches of the shipped data."""
    source, precision = spec["source"], spec["precision"]
    tokenizer = load_tokenizer(source)
    torch.manual_seed(DATA_SEED)  # the new classification head
    model = load_sequence_classifier(
        source, num_labels=len(LABEL_NAMES), id2label=ID2LABEL, label2id=LABEL2ID, dropout=0.0,
        attn_implementation="eager",
    )  # fmt: skip
    train = tokenize(load_data(DEFAULT_DATA).splits, tokenizer, spec["max_length"])["train"]
    rows = [train[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(DATA_SEED)).tolist()]
    collator = PaddingCollator(tokenizer)
    global_batch = spec["global_batch"]

    def batches(step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        first = step * global_batch
        return [
            dict(collator([rows[(first + i) % len(rows)] for i in micro]))
            for micro in rank_slice(global_batch, rank, world, spec["micro_batch"])
        ]

    return Workload(model, [p for p in model.parameters() if p.requires_grad], precision, batches)


def build_causal_lm_lora(spec: dict[str, Any]) -> Workload:
    """The causal-LM job's LoRA on its base model, on random token ids (as bench_causal_lm)."""
    from src.training import causal_lm  # peft and bitsandbytes: only where this workload runs
    from src.training.causal_lm_config import CausalLMConfig

    source, precision = spec["source"], spec["precision"]
    config = CausalLMConfig(model=source, method="lora", precision="fp32", output_dir=spec["scratch_dir"])
    torch.manual_seed(DATA_SEED)  # the adapters' initialisation
    model, _ = causal_lm.prepare_model(config, source, precision)
    vocab, seq_len, global_batch = model.config.vocab_size, spec["seq_len"], spec["global_batch"]

    def batches(step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(DATA_SEED * 1_000_003 + step)
        ids = torch.randint(0, vocab, (global_batch, seq_len), generator=generator)
        return [
            {"input_ids": ids[micro.start : micro.stop], "labels": ids[micro.start : micro.stop]}
            for micro in rank_slice(global_batch, rank, world, spec["micro_batch"])
        ]

    return Workload(model, [p for p in model.parameters() if p.requires_grad], precision, batches)


BUILDERS: dict[str, Callable[[dict[str, Any]], Workload]] = {
    "classification": build_classification,
    "smollm2_lora": build_causal_lm_lora,
}


def train_step(
    model: torch.nn.Module, work: Workload, optimizer: torch.optim.Optimizer, micro: list[dict], sync: bool
) -> StepSplit:
    """One optimizer step over `micro`; DDP all-reduces in the last backward only when `sync` (else no_sync)."""
    forward = backward = 0.0
    for index, batch in enumerate(micro):
        reduce_now = sync and index == len(micro) - 1
        quiet = model.no_sync() if hasattr(model, "no_sync") and not reduce_now else contextlib.nullcontext()
        with quiet:  # both the forward and the backward: DDP decides in the forward whether to reduce
            start = perf_counter()
            with autocast(work.precision):
                loss = model(**batch).loss / len(micro)
            middle = perf_counter()
            loss.backward()
            forward += middle - start
            backward += perf_counter() - middle
    start = perf_counter()
    torch.nn.utils.clip_grad_norm_(work.trainable, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepSplit(forward, backward, perf_counter() - start)


def slowest(per_rank: Sequence[Sequence[StepSplit]]) -> list[StepSplit]:
    """Step by step, the split of the slowest rank: it sets the pace of a data-parallel step."""
    return [max(step, key=lambda s: s.step_s) for step in zip(*per_rank, strict=True)]


def gathered(value: Any, world: int) -> list[Any]:
    """`value` from every rank (all ranks call this), rank order; [value] at world size 1."""
    if world == 1:
        return [value]
    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


def timed_allreduce(numel: int, repeats: int, world: int) -> list[float]:
    """Seconds of each of `repeats` all-reduces of `numel` fp32 elements, the slowest rank's, after a barrier each."""
    tensor = torch.zeros(numel, dtype=torch.float32)
    for _ in range(ALLREDUCE_WARMUP):
        dist.all_reduce(tensor)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = perf_counter()
        dist.all_reduce(tensor)
        times.append(perf_counter() - start)
    return [max(t) for t in zip(*gathered(times, world), strict=True)]


def ddp_buckets(model: torch.nn.Module) -> tuple[list[int], bool]:
    """Bytes of each gradient bucket DDP all-reduces, and whether they are the buckets DDP rebuilt in the order the
    gradients became ready (after its first step) rather than its initial guess."""
    data = model._get_ddp_logging_data()  # the sizes DDP logs; no public API reports them
    rebuilt = bool(data.get("rebuilt_bucket_sizes"))
    sizes = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes") or ""
    return [int(s) for s in str(sizes).split(",") if s.strip()], rebuilt


def run_workload(spec: dict[str, Any], rank: int, world: int, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Time one workload in this rank's process: 1 rank plain steps; 2 ranks DDP and no_sync steps alternating."""
    work = BUILDERS[spec["name"]](spec)
    work.model.train()
    gradient_bytes = sum(p.numel() * p.element_size() for p in work.trainable)
    model = work.model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(work.model, bucket_cap_mb=BUCKET_CAP_MB)
    optimizer = torch.optim.AdamW(work.trainable, lr=spec["learning_rate"], weight_decay=0.0, fused=True)
    modes = ("ddp", "compute") if world > 1 else ("step",)
    splits: dict[str, list[StepSplit]] = {mode: [] for mode in modes}
    shape = [0, 0]  # micro-batches per step, examples per micro-batch
    for index in range(warmup + steps):
        micro = work.batches(index, rank, world)
        shape = [len(micro), len(micro[0]["input_ids"])]
        for mode in modes:
            if world > 1:
                dist.barrier()  # untimed: every rank starts the step together
            split = train_step(model, work, optimizer, micro, sync=mode != "compute")
            if index >= warmup:
                splits[mode].append(split)
    result: dict[str, Any] = {
        "trainable_parameters": sum(p.numel() for p in work.trainable),
        "gradient_bytes": gradient_bytes,
        "micro_batches": shape[0],
        "micro_batch": shape[1],
    }
    for mode in modes:
        per_rank = [[StepSplit(**s) for s in rank_splits] for rank_splits in
                    gathered([asdict(s) for s in splits[mode]], world)]  # fmt: skip
        result[mode] = [asdict(s) for s in slowest(per_rank)]
    if world > 1:
        result["ddp_bucket_bytes"], result["ddp_buckets_rebuilt"] = ddp_buckets(model)
        result["allreduce_s"] = timed_allreduce(gradient_bytes // 4, repeats, world)
        result["tiny_allreduce_s"] = timed_allreduce(LATENCY_NUMEL, LATENCY_REPEATS, world)
    del model, work, optimizer
    gc.collect()
    return result


def worker(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One rank: every workload in turn; rank 0 returns the results (for one JSON line on stdout)."""
    rank, world = spec["rank"], spec["world_size"]
    torch.set_num_threads(spec["threads"])
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://{LOOPBACK}:{spec['port']}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S),
        )  # fmt: skip
    try:
        results = {
            w["name"]: run_workload(w, rank, world, w["steps"], w["warmup"], spec["allreduce_repeats"])
            for w in spec["workloads"]
        }
    finally:
        if world > 1:
            dist.destroy_process_group()
    return results if rank == 0 else None


# --------------------------------------------------------------------------------------------------------------
# The driver: starts the ranks, combines their measurements, projects, reports.


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the rendezvous of one group of ranks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def rank_processes(commands: list[list[str]], env: dict[str, str]) -> Iterator[list[tuple[subprocess.Popen, Any, Any]]]:
    """Start one process per command, stdout and stderr to temp files (no pipe can fill up); kill leftovers."""
    started = []
    try:
        for command in commands:
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            started.append((subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env), out, err))
        yield started
    finally:
        for process, out, err in started:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()


def run_ranks(world: int, threads: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Every workload at `world` ranks of `threads` threads each, one process per rank; rank 0's results."""
    spec = spec | {"world_size": world, "threads": threads, "port": free_port()}
    env = os.environ | {"GLOO_SOCKET_IFNAME": GLOO_IFNAME, "OMP_NUM_THREADS": str(threads)}
    commands = [[sys.executable, "-m", MODULE, "--worker_spec", json.dumps(spec | {"rank": r})] for r in range(world)]
    logger.info("%d rank%s x %d thread%s: %s", world, "s" if world > 1 else "", threads, "s" if threads > 1 else "",
                ", ".join(w["name"] for w in spec["workloads"]))
    with rank_processes(commands, env) as processes:
        # Until all have exited, or one has failed: the others would then wait for it until DIST_TIMEOUT_S.
        while any(p.poll() is None for p, _, _ in processes) and all(p.poll() in (None, 0) for p, _, _ in processes):
            time.sleep(0.2)
        for rank, (process, _, err) in enumerate(processes):
            if process.poll() not in (None, 0):
                err.seek(0)
                raise RuntimeError(f"rank {rank} of {world} failed (exit {process.returncode}):\n{err.read()[-3000:]}")
        out = processes[0][1]
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])


def splits_of(records: list[dict[str, float]]) -> list[StepSplit]:
    return [StepSplit(**r) for r in records]


def summarize(name: str, spec: dict[str, Any], one: dict[str, Any], two: dict[str, Any], hop_floor_s: float,
              threads: int) -> dict[str, Any]:  # fmt: skip
    """One workload's measurements, the 2-rank loopback check of the model, and the projection table."""
    t1 = median_step(splits_of(one["step"]))
    t2_ddp, t2_compute = median_step(splits_of(two["ddp"])), median_step(splits_of(two["compute"]))
    gradient_bytes = one["gradient_bytes"]
    buckets = len(two["ddp_bucket_bytes"]) or 1
    allreduce = statistics.median(two["allreduce_s"])
    tiny = statistics.median(two["tiny_allreduce_s"])
    link = loopback_link(gradient_bytes, allreduce, tiny)
    hop_latency = max(hop_floor_s, link["hop_latency_s"])

    # The model on the one configuration measured: 2 ranks over loopback, from the 2-rank compute-only step.
    loop_allreduce = ring_allreduce_s(gradient_bytes, TWO_RANKS, link["effective_gbit_s"], link["hop_latency_s"],
                                      buckets)  # fmt: skip
    last_backward = t2_compute.backward_s / two["micro_batches"]
    check = {
        "measured_step_s": t2_ddp.step_s,
        "measured_efficiency": t1.step_s / t2_ddp.step_s,
        "predicted_allreduce_s": loop_allreduce,
        "predicted_step_s_not_overlapped": t2_compute.step_s + loop_allreduce,
        "predicted_step_s_overlapped": t2_compute.step_s - last_backward + max(last_backward, loop_allreduce),
    }
    for kind in ("not_overlapped", "overlapped"):
        check[f"predicted_efficiency_{kind}"] = t1.step_s / check[f"predicted_step_s_{kind}"]

    return {
        "model": spec["model"], "model_source": spec["source"], "precision": spec["precision"],
        "global_batch": spec["global_batch"], "micro_batch": spec["micro_batch"],
        **{k: spec[k] for k in ("max_length", "seq_len") if k in spec},
        "steps": spec["steps"], "warmup": spec["warmup"],
        "trainable_parameters": one["trainable_parameters"], "gradient_bytes": gradient_bytes,
        "ddp_buckets": buckets, "ddp_bucket_bytes": two["ddp_bucket_bytes"],
        "ddp_buckets_rebuilt": two["ddp_buckets_rebuilt"],
        "measured": {
            "one_rank": {"threads": threads, "micro_batch": one["micro_batch"],
                         "gradient_accumulation": one["micro_batches"], **asdict(t1), "step_s": t1.step_s,
                         "step_times_s": [s.step_s for s in splits_of(one["step"])]},
            "two_ranks": {"threads_per_rank": max(1, threads // TWO_RANKS), "micro_batch": two["micro_batch"],
                          "gradient_accumulation": two["micro_batches"], "ddp_step_s": t2_ddp.step_s,
                          "compute_step_s": t2_compute.step_s, "communication_s": t2_ddp.step_s - t2_compute.step_s,
                          "ddp_split": asdict(t2_ddp), "compute_split": asdict(t2_compute),
                          "ddp_step_times_s": [s.step_s for s in splits_of(two["ddp"])],
                          "compute_step_times_s": [s.step_s for s in splits_of(two["compute"])],
                          "loopback_efficiency": t1.step_s / t2_ddp.step_s},
            "allreduce_loopback": {"bytes": gradient_bytes, "seconds": allreduce, "times_s": two["allreduce_s"],
                                   "tiny_bytes": LATENCY_NUMEL * 4, "tiny_seconds": tiny, **link},
        },
        "model_check_2_ranks_loopback": check,
        "projection": {
            "hop_latency_s": hop_latency,
            "rows": projection_table(t1, gradient_bytes, buckets, spec["global_batch"], spec["micro_batch"],
                                     hop_latency),
        },
    }  # fmt: skip


def cpu_model_name(cpuinfo_text: str) -> str:
    """The `model name` of the first CPU in a /proc/cpuinfo text ("unknown" without one, e.g. on arm64)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return "unknown"


def format_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [f"machine: {machine['cpu_model']}, {machine['cores']} cores, native bf16 "
             f"{'yes' if machine['native_bf16'] else 'no'}, torch {machine['torch']}, {machine['allocator']}",
             "measured (this machine, loopback):",
             f"{'workload':<15} {'prec':<5} {'grad MB':>8} {'buckets':>7} {'1 rank s':>9} {'2 ranks s':>10} "
             f"{'2r compute s':>12} {'comm s':>7} {'allreduce s':>11} {'Gbit/s':>7} {'hop us':>7} "
             f"{'eff 2r':>6}"]  # fmt: skip
    for name, w in report["workloads"].items():
        m = w["measured"]
        one, two, ar = m["one_rank"], m["two_ranks"], m["allreduce_loopback"]
        lines.append(
            f"{name:<15} {w['precision']:<5} {w['gradient_bytes'] / 1e6:>8.1f} {w['ddp_buckets']:>7} "
            f"{one['step_s']:>9.3f} {two['ddp_step_s']:>10.3f} {two['compute_step_s']:>12.3f} "
            f"{two['communication_s']:>7.3f} {ar['seconds']:>11.4f} {ar['effective_gbit_s']:>7.1f} "
            f"{ar['hop_latency_s'] * 1e6:>7.0f} {two['loopback_efficiency']:>6.2f}"
        )
    lines.append("model check, 2 ranks over loopback (from the 2-rank compute step + loopback all-reduce):")
    for name, w in report["workloads"].items():
        c = w["model_check_2_ranks_loopback"]
        lines.append(
            f"{name:<15} measured {c['measured_step_s']:.3f} s (eff {c['measured_efficiency']:.2f}); predicted "
            f"{c['predicted_step_s_not_overlapped']:.3f} s not overlapped (eff "
            f"{c['predicted_efficiency_not_overlapped']:.2f}), {c['predicted_step_s_overlapped']:.3f} s overlapped "
            f"(eff {c['predicted_efficiency_overlapped']:.2f})"
        )
    lines.append("projection (N machines like this one; step s and efficiency, all-reduce not overlapped/overlapped):")
    lines.append(f"{'workload':<15} {'Gbit/s':>6} {'N':>3} {'compute s':>9} {'allreduce s':>11} {'step s':>15} "
                 f"{'efficiency':>11}")  # fmt: skip
    for name, w in report["workloads"].items():
        for row in w["projection"]["rows"]:
            lines.append(
                f"{name:<15} {row['gbit_s']:>6g} {row['machines']:>3} {row['compute_s']:>9.3f} "
                f"{row['allreduce_s']:>11.4f} {row['step_s_not_overlapped']:>7.3f}/{row['step_s_overlapped']:<7.3f} "
                f"{row['efficiency_not_overlapped']:>5.2f}/{row['efficiency_overlapped']:.2f}"
            )
    return "\n".join(lines)


def positive_int(flag: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UserError(f"--{flag} must be >= {minimum}, got {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = CliArgumentParser(prog="bench_distributed", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="Comma-separated subset (%(default)s).")
    parser.add_argument("--classifier_model", default=DEFAULT_MODEL,
                        help="Model of the classification workload (default: %(default)s).")
    parser.add_argument("--causal_lm_model", default=DEFAULT_CAUSAL_LM,
                        help="Base model of the smollm2_lora workload (default: %(default)s).")
    parser.add_argument("--steps", type=int, help="Timed optimizer steps per mode (default: the workload's, "
                        + ", ".join(f"{n} {w['steps']}" for n, w in WORKLOADS.items()) + ").")
    parser.add_argument("--warmup", type=int, help="Untimed optimizer steps first (default: the workload's, "
                        + ", ".join(f"{n} {w['warmup']}" for n, w in WORKLOADS.items()) + ").")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto: bf16 autocast where the CPU has native bf16, as the jobs do (%(default)s).")
    parser.add_argument("--allreduce_repeats", type=int, default=ALLREDUCE_REPEATS,
                        help="Timed all-reduces of each workload's gradient bytes (%(default)s).")
    parser.add_argument("--hop_latency_us", type=float, default=LAN_HOP_LATENCY_US,
                        help="LAN latency floor per ring hop for the projection, microseconds (%(default)s).")
    parser.add_argument("--output_dir", help=f"Where {RESULT_FILE} goes (default: ./outputs/{JOB_NAME}).")
    parser.add_argument("--worker_spec", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker_spec:  # a rank started by run_ranks: one JSON line on stdout from rank 0
        results = worker(json.loads(args.worker_spec))
        if results is not None:
            print(json.dumps(results))
        return 0

    setup_logging()
    positive_int("steps", args.steps)
    positive_int("warmup", args.warmup, minimum=0)
    positive_int("allreduce_repeats", args.allreduce_repeats)
    if not args.hop_latency_us >= 0:
        raise UserError(f"--hop_latency_us must be >= 0, got {args.hop_latency_us}")
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        raise UserError(f"unknown workloads {', '.join(unknown) or '(none)'}; choose from {', '.join(WORKLOADS)}")
    output_dir = resolve_user_path(args.output_dir) if args.output_dir else default_output_dir(JOB_NAME)
    flags = cpu_flags()
    precision = resolve_precision(args.precision, flags)
    threads = configure_threads()
    models = {"classification": args.classifier_model, "smollm2_lora": args.causal_lm_model}

    specs = []
    for name in names:
        source = local_model_dir(resolve_model_source(models[name]))  # a GGUF is imported once, before the ranks
        spec = WORKLOADS[name] | {"name": name, "model": models[name], "source": source, "precision": precision,
                                  "scratch_dir": str(output_dir / "scratch")}  # fmt: skip
        spec["steps"] = args.steps if args.steps is not None else spec["steps"]
        spec["warmup"] = args.warmup if args.warmup is not None else spec["warmup"]
        if spec["global_batch"] % TWO_RANKS or (spec["global_batch"] // TWO_RANKS) % min(
            spec["micro_batch"], spec["global_batch"] // TWO_RANKS
        ):
            raise UserError(f"{name}: global batch {spec['global_batch']} does not split into micro-batches")
        specs.append(spec)

    common = {"workloads": specs, "allreduce_repeats": args.allreduce_repeats}
    one = run_ranks(1, threads, common)
    two = run_ranks(TWO_RANKS, max(1, threads // TWO_RANKS), common)

    try:
        cpu_model = cpu_model_name(CPUINFO_PATH.read_text())
    except OSError:
        cpu_model = "unknown"
    report: dict[str, Any] = {
        "machine": {"cpu_model": cpu_model, "cores": threads, "native_bf16": supports_bf16(flags),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "allocator": allocator_in_use()},
        "settings": {"bucket_cap_mb": BUCKET_CAP_MB, "allreduce_repeats": args.allreduce_repeats,
                     "latency_repeats": LATENCY_REPEATS, "lan_hop_latency_floor_s": args.hop_latency_us * 1e-6,
                     "machines": list(MACHINES), "bandwidths_gbit_s": list(BANDWIDTHS_GBIT_S),
                     "backend": "gloo", "address": LOOPBACK},
        "projection_model": PROJECTION_MODEL,
        "workloads": {spec["name"]: summarize(spec["name"], spec, one[spec["name"]], two[spec["name"]],
                                              args.hop_latency_us * 1e-6, threads) for spec in specs},
    }  # fmt: skip
    summary_name = "classification" if "classification" in names else names[0]
    row = next(r for r in report["workloads"][summary_name]["projection"]["rows"]
               if r["machines"] == SUMMARY_MACHINES and r["gbit_s"] == SUMMARY_GBIT_S)  # fmt: skip
    key = f"{summary_name}_{SUMMARY_MACHINES}x{SUMMARY_GBIT_S:g}gbit_efficiency"
    report["summary"] = {key: row["efficiency_not_overlapped"],
                         key.replace("_efficiency", "_efficiency_overlapped"): row["efficiency_overlapped"]}
    path = atomic_write_json(output_dir / RESULT_FILE, report)
    print(format_report(report))
    print(f"wrote {path}")
    print(f"{key}: {row['efficiency_not_overlapped']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
