"""Data-parallel training across processes and machines on PyTorch's own launcher (torchrun) and gloo.

    train_model --nproc_per_node 2 [...]                                   # 2 processes on this machine
    train_model --nnodes 2 --node_rank R --master_addr HEAD --nproc_per_node P [...]   # on each of 2 machines
    torchrun --nproc_per_node 2 -m src.training.train_model [...]          # the same, as PyTorch users type it

The launcher flags below make the entry point call `torch.distributed.run` (torchrun) on itself; every rank then
runs the job under transformers' Trainer with DistributedDataParallel on gloo. What this module adds around it:

- one global batch whatever the world size: per_rank_batches() splits per_device_train_batch_size x
  gradient_accumulation_steps (the global batch, as set) into the same number of examples per optimizer step on 1,
  2 or N processes (checkpoints.GlobalBatchSampler hands each rank its share of the same batches);
- threads per rank = usable cores / processes per machine (torchrun alone would set 1), gloo on the interface that
  reaches --master_addr (lo for loopback), and every wait bounded by --ddp_timeout instead of PyTorch's 30 minutes;
- join_world(): before training every rank checks the world it joined with one collective, and a job that would
  train at world size 1 (or N separate models) where more was asked fails;
- failures as one line: a rank's bad input, a dead rank, an unreachable head node (report_failure()).
"""

import dataclasses
import datetime
import fcntl
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from src.common.errors import CliArgumentParser, UserError
# Re-exported, so the entry points ask one module where they are: distributed.in_rank(), .is_main_process(), ...
from src.common.ranks import (
    in_rank,
    is_main_process,
    lost_contact,
    rank,
    report_rank_error,
    restart_count,
    world_size,
)

RE_EXPORTED = (in_rank, is_main_process, lost_contact, rank, report_rank_error, restart_count, world_size)

logger = logging.getLogger(__name__)

# Set by our launcher for every rank: the world size the user asked for (nnodes x nproc_per_node).
EXPECTED_WORLD_SIZE_ENV = "CPU_FINETUNE_EXPECTED_WORLD_SIZE"
# Test hook, as fault injection: "RANK:STEP" makes that rank SIGKILL itself after optimizer step STEP, in the first
# attempt only (torchrun's TORCHELASTIC_RESTART_COUNT 0), so a test can check the restart path deterministically.
KILL_RANK_AT_STEP_ENV = "CPU_FINETUNE_TEST_KILL_RANK_AT_STEP"
DEFAULT_MASTER_PORT = 29500  # torchrun's default for --master_port with several machines
MONITOR_INTERVAL_S = 0.5  # how often torchrun's agent polls its ranks; a dead rank is noticed within this


@dataclass(frozen=True)
class LaunchOptions:
    """torchrun's options, as train_model flags (the same names torchrun has)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: a free port on one machine, DEFAULT_MASTER_PORT on several
    max_restarts: int = 0
    gloo_socket_ifname: str | None = None  # None: the interface that reaches master_addr (lo for loopback)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def wants_launch(self) -> bool:
        return self.world_size > 1 or self.max_restarts > 0

    def validate(self) -> None:
        if self.nproc_per_node < 1:
            raise UserError(f"--nproc_per_node must be >= 1 processes, got {self.nproc_per_node}")
        if self.nnodes < 1:
            raise UserError(f"--nnodes must be >= 1 machines, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node_rank must be in [0, {self.nnodes - 1}] (one per machine), got {self.node_rank}")
        if self.max_restarts < 0:
            raise UserError(f"--max_restarts must be >= 0, got {self.max_restarts}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise UserError(f"--master_port must be in [1, 65535], got {self.master_port}")


LAUNCH_HELP = {
    "nproc_per_node": "Training processes on this machine (data parallel, gloo); threads per process = usable "
    "cores / this. With more than 1 (or with --nnodes), train_model starts them with torchrun.",
    "nnodes": "Machines in the job; start the same command on each with its own --node_rank.",
    "node_rank": "This machine's index in [0, --nnodes); machine 0 hosts the rendezvous at --master_addr.",
    "master_addr": "Address of machine 0 (--node_rank 0), reachable from every machine.",
    "master_port": f"Port of the rendezvous on machine 0; default: a free one on one machine, "
    f"{DEFAULT_MASTER_PORT} with --nnodes > 1.",
    "max_restarts": "Restart the whole group this many times when a process dies; it continues from the last "
    "complete checkpoint (--checkpoint_every N) to the same result.",
    "gloo_socket_ifname": "Network interface gloo uses (GLOO_SOCKET_IFNAME); default: the one that reaches "
    "--master_addr (lo for a loopback address).",
}


def add_launch_arguments(parser) -> None:
    """The launcher flags, in their own --help group (parse_launch reads them, the job's parser ignores them)."""
    group = parser.add_argument_group("distributed training (PyTorch's torchrun, gloo)")
    defaults = LaunchOptions()
    for field in dataclasses.fields(LaunchOptions):
        kind = int if field.name in ("nproc_per_node", "nnodes", "node_rank", "master_port", "max_restarts") else str
        group.add_argument(f"--{field.name}", type=kind, default=getattr(defaults, field.name),
                           help=LAUNCH_HELP[field.name])


LAUNCH_FLAGS = tuple(f.name for f in dataclasses.fields(LaunchOptions))


def parse_launch(argv: Sequence[str]) -> LaunchOptions:
    """The launcher flags among a job's flags (the rest are left for the job)."""
    parser = CliArgumentParser(add_help=False, allow_abbrev=False)
    add_launch_arguments(parser)
    known, _ = parser.parse_known_args(list(argv))
    options = LaunchOptions(**{name: getattr(known, name) for name in LAUNCH_FLAGS})
    options.validate()
    return options


# --- One global batch, whatever the world size ------------------------------------------------------------------------


def per_rank_batches(micro_batch: int, accumulation: int, world: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) per rank so that `world` ranks take micro_batch x accumulation examples per
    optimizer step between them, as one process does with (micro_batch, accumulation).

    Each rank takes global / world examples per step, in as few micro-batches as fit --per_device_train_batch_size
    (the memory limit): e.g. 64 x 1 on 2 ranks -> 32 x 1 each; 4 x 4 on 2 ranks -> 4 x 2 each; 4 x 4 on 32 -> refused.
    """
    global_batch = micro_batch * accumulation
    if global_batch % world:
        raise UserError(
            f"the global batch of {global_batch} examples (--per_device_train_batch_size {micro_batch} x "
            f"--gradient_accumulation_steps {accumulation}) does not split evenly over {world} processes; choose a "
            f"global batch that {world} divides"
        )
    per_rank = global_batch // world
    steps = -(-per_rank // micro_batch)  # ceil: micro-batches of at most micro_batch examples
    while per_rank % steps:
        steps += 1
    return per_rank // steps, steps


# --- Launching ------------------------------------------------------------------------------------------------------


def interface_for(address: str) -> str | None:
    """The name of this machine's network interface that reaches `address` (Linux); None if it cannot be told."""
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(address))
    except (OSError, ValueError):
        return None
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    if ip.is_loopback:
        return next((n for n in names if n.startswith("lo")), None)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))  # no packet is sent: this only asks the kernel for the route's source
            local = probe.getsockname()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as query:
            for name in names:
                try:
                    request = struct.pack("256s", name.encode()[:15])
                    found = socket.inet_ntoa(fcntl.ioctl(query.fileno(), 0x8915, request)[20:24])  # SIOCGIFADDR
                except OSError:
                    continue
                if found == local:
                    return name
    except OSError:
        return None
    return None


def threads_per_rank(nproc_per_node: int) -> int:
    from src.common.cpu import available_cpus

    return max(1, available_cpus() // nproc_per_node)


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_args(options: LaunchOptions, timeout_s: int, module: str, argv: Sequence[str]) -> list[str]:
    """torchrun's command line for running `python -m module argv` on this machine's share of the job."""
    args = [
        f"--nnodes={options.nnodes}",
        f"--nproc_per_node={options.nproc_per_node}",
        f"--max_restarts={options.max_restarts}",
        f"--monitor_interval={MONITOR_INTERVAL_S}",
    ]
    if options.nnodes > 1:
        port, addr = options.master_port or DEFAULT_MASTER_PORT, options.master_addr
    else:  # one machine: a free loopback port (torchrun's own choice here, c10d on port 0, cannot restart a group)
        port, addr = options.master_port or free_port(), "127.0.0.1"
    args += [f"--node_rank={options.node_rank}", f"--master_addr={addr}", f"--master_port={port}",
             "--rdzv_backend=static", f"--rdzv_conf=timeout={timeout_s}"]
    return [*args, "-m", module, *argv]


def launch(options: LaunchOptions, module: str, argv: Sequence[str], timeout_s: int) -> int:
    """Run `python -m module argv` as this machine's ranks of the job, with torchrun; returns the exit code.

    Each rank gets the same flags (it sees the launcher flags and does not launch again) and an environment that
    makes it find this process's modules (PYTHONPATH = this sys.path, so it works inside Bazel's runfiles too).
    """
    from torch.distributed import run as torchrun  # the launcher is PyTorch's; imported only when launching

    env = os.environ
    env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(options.nproc_per_node)))
    ifname = options.gloo_socket_ifname or env.get("GLOO_SOCKET_IFNAME") or interface_for(options.master_addr)
    if ifname:
        env["GLOO_SOCKET_IFNAME"] = ifname
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env[EXPECTED_WORLD_SIZE_ENV] = str(options.world_size)
    env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"  # silences a warning; gloo only
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)  # restarts stay visible
    # Its "failed (exitcode ...)" record would repeat report_failure's line.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    logger.info(
        "starting %d of %d processes (machine %d of %d, %s threads each, gloo on %s)",
        options.nproc_per_node, options.world_size, options.node_rank, options.nnodes, env["OMP_NUM_THREADS"],
        ifname or "the default interface",
    )
    args = torchrun.parse_args(torchrun_args(options, timeout_s, module, argv))
    started = time.monotonic()
    try:
        torchrun.run(args)
    except BaseException as e:  # noqa: BLE001 - every way the group can fail becomes one line
        return report_failure(e, options, timeout_s, time.monotonic() - started)
    return 0


def report_failure(error: BaseException, options: LaunchOptions, timeout_s: int, seconds: float) -> int:
    """One line for a failed group; returns the exit code (2 when a rank reported bad input, else 1).

    A rank's own bad-input line was already printed by rank 0 (or is in its error file, shown here).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(error, KeyboardInterrupt):
        raise error
    if isinstance(error, ChildFailedError):
        # The rank that failed first, not those the agent then stopped (SIGTERM) or that lost it (EXIT_LOST_CONTACT).
        failures = sorted(error.failures.values(),
                          key=lambda f: (f.exitcode in (-signal.SIGTERM, 4), f.timestamp, f.local_rank))
        first = failures[0]
        global_rank = options.node_rank * options.nproc_per_node + first.local_rank
        if first.exitcode == 2:
            if global_rank != 0 and isinstance(first.message, str) and first.message:
                print(f"error: rank {global_rank}: {first.message}", file=sys.stderr)
            return 2
        if first.exitcode < 0:
            name = signal.Signals(-first.exitcode).name if -first.exitcode in signal.valid_signals() else ""
            what = f"was killed by {name or f'signal {-first.exitcode}'}"
        else:
            what = f"exited with code {first.exitcode}"
        restarts = (f" after {options.max_restarts} restarts" if options.max_restarts
                    else "; with --checkpoint_every N, --max_restarts N restarts the group from its last checkpoint")
        detail = f": {first.message}" if isinstance(first.message, str) and first.message and first.exitcode > 0 \
            and not first.message.startswith("To enable traceback") else ""
        print(f"error: rank {global_rank} (pid {first.pid}) {what}{detail}; the job stopped{restarts}",
              file=sys.stderr)
        return 1
    message = " ".join(str(error).split())
    if options.nnodes > 1:
        port = options.master_port or DEFAULT_MASTER_PORT
        print(
            f"error: machine {options.node_rank} could not form the group of {options.nnodes} machines at "
            f"{options.master_addr}:{port} within --ddp_timeout {timeout_s} s ({seconds:.0f} s elapsed): start the "
            f"same command on every machine, each with its own --node_rank, and check that {options.master_addr} is "
            f"reachable ({type(error).__name__}: {message[:200]})",
            file=sys.stderr,
        )
        return 1
    print(f"error: the process group failed to start: {type(error).__name__}: {message[:300]}", file=sys.stderr)
    return 1


# --- In a rank --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    size: int
    rank: int
    local_rank: int
    nodes: int
    threads: int

    def describe(self) -> str:
        return (f"{self.size} processes on {self.nodes} machine{'s' if self.nodes > 1 else ''} (gloo, "
                f"{self.threads} threads each)")


def join_world(trainer_world_size: int, timeout_s: int) -> World:
    """Check the world this rank joined before any training: its size (the one asked for), unique ranks, one
    collective within the timeout. The Trainer's own view must agree: a Trainer that would not train data-parallel
    (e.g. --use_cpu false on a CPU-only host, where every rank would silently train its own model) is refused."""
    import torch
    import torch.distributed as dist

    size = world_size()
    expected = int(os.environ.get(EXPECTED_WORLD_SIZE_ENV, size))
    if size != expected:
        raise UserError(f"this rank joined a world of {size} processes, but {expected} were asked for "
                        "(--nnodes x --nproc_per_node); check that every machine runs the same command")
    if trainer_world_size != size:
        raise UserError(
            f"the Trainer would train at world size {trainer_world_size} in a job of {size} processes (each would "
            "train its own model): keep --use_cpu true and --ddp_backend gloo for CPU data-parallel training"
        )
    init_process_group(timeout_s)
    if dist.get_backend() != "gloo":
        raise UserError(f"CPU data-parallel training uses gloo; --ddp_backend {dist.get_backend()} is not supported")
    mine = {"rank": dist.get_rank(), "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "node": int(os.environ.get("GROUP_RANK", 0)), "threads": torch.get_num_threads()}
    everyone: list = [None] * size
    dist.all_gather_object(everyone, mine)
    ranks = sorted(member["rank"] for member in everyone)
    if ranks != list(range(size)):
        raise UserError(f"ranks {ranks} do not form a world of {size}; check --node_rank on every machine")
    nodes = len({member["node"] for member in everyone})
    return World(size, mine["rank"], mine["local_rank"], nodes, min(member["threads"] for member in everyone))


def init_process_group(timeout_s: int) -> None:
    """Join the gloo process group torchrun set up (env://), with `timeout_s` for every collective: accelerate's CPU
    path would use PyTorch's 30 minutes. A rank that cannot reach the others fails within the timeout."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group("gloo", timeout=timeout)
        return
    # torchrun's agent keeps one store for all attempts of a static rendezvous: after a restart, env:// would let
    # the new ranks read the dead ranks' gloo addresses and hang connecting to them. A prefix per attempt keeps
    # each attempt's keys apart.
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size(),
                                is_master=False, timeout=timeout)
    store = dist.PrefixStore(f"cpu_finetune/attempt_{restart_count()}", agent_store)
    dist.init_process_group("gloo", store=store, rank=rank(), world_size=world_size(), timeout=timeout)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def parameters_digest(model) -> str:
    """sha256 of every trainable parameter's bytes, in order: equal on every rank of a correct data-parallel run."""
    digest = hashlib.sha256()
    for _, parameter in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(parameter.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_parameters_identical(model) -> str | None:
    """After training: every rank's trainable parameters must be bit-identical; UserError-free RuntimeError if not
    (a bug). Returns the digest (None when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    digest = parameters_digest(model)
    digests: list = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"trainable parameters differ between ranks after training: {digests}")
    logger.info("trainable parameters identical on all %d processes (sha256 %s)", len(digests), digest)
    return digest


def maybe_kill_self(step: int) -> None:
    """The KILL_RANK_AT_STEP_ENV test hook (see above): a real SIGKILL of this rank, first attempt only."""
    spec = os.environ.get(KILL_RANK_AT_STEP_ENV)
    if not spec or restart_count() > 0:
        return
    target_rank, _, target_step = spec.partition(":")
    if int(target_rank) == rank() and int(target_step) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def run_report(world: World | None, digest: str | None) -> dict:
    """metrics.json's "distributed": world size, machines, threads per process, the parameters' digest."""
    if world is None:
        return {"world_size": 1}
    return {"world_size": world.size, "machines": world.nodes, "threads_per_process": world.threads,
            "parameters_sha256": digest}


def describe_report(report: dict) -> str:
    """E.g. "2 processes on 1 machine, 1 thread each; parameters identical on every process"."""
    machines = report["machines"]
    return (f"{report['world_size']} processes on {machines} machine{'s' if machines > 1 else ''}, "
            f"{report['threads_per_process']} threads each; trained parameters identical on every process")
