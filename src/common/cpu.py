"""CPU feature detection (bf16), usable-core counting (affinity + cgroup quota), torch thread setup, bf16 autocast
and peak memory. The memory allocator (tcmalloc preloaded where installed) is src/common/allocator.py.

The parsers are pure functions over file contents so they can be tested with fake inputs.
"""

import contextlib
import logging
import math
import os
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch

from src.common.errors import UserError

logger = logging.getLogger(__name__)

CPUINFO_PATH = Path("/proc/cpuinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Either flag means bf16 matmuls run natively (AVX512-BF16 dot products or AMX tiles); without them bf16 is
# emulated and slower than fp32.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def parse_cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text (x86 `flags`, arm64 `Features`)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_flags(cpuinfo_path: Path = CPUINFO_PATH) -> frozenset[str]:
    """Feature flags of this machine's CPU; empty when /proc/cpuinfo is unreadable (non-Linux)."""
    try:
        return parse_cpu_flags(cpuinfo_path.read_text())
    except OSError:
        return frozenset()


def supports_bf16(flags: Iterable[str]) -> bool:
    """True if the CPU computes bf16 natively."""
    return not BF16_FLAGS.isdisjoint(flags)


def resolve_precision(requested: str, flags: Iterable[str]) -> Literal["bf16", "fp32"]:
    """Turn the requested precision into the one to use: "auto" picks bf16 where the CPU supports it."""
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision {requested!r}; use one of: {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return "fp32"
    native_bf16 = supports_bf16(flags)
    if requested == "bf16" and not native_bf16:
        raise UserError(
            "bf16 was requested but this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag); "
            "use --precision fp32 (or auto)"
        )
    return "bf16" if native_bf16 else "fp32"


def parse_cgroup_v2_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"); None if unlimited."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000  # the kernel's default period, microseconds
    return quota / period


def parse_cgroup_v1_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None if unlimited (quota -1)."""
    quota = int(quota_text.strip())
    if quota <= 0:
        return None
    return quota / int(period_text.strip())


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup (v2, else v1) in CPUs; None if there is none or it is unreadable."""
    try:
        cpu_max = root / "cpu.max"
        if cpu_max.is_file():
            return parse_cgroup_v2_cpu_max(cpu_max.read_text())
        for controller in ("cpu", "cpu,cpuacct"):
            quota, period = root / controller / "cpu.cfs_quota_us", root / controller / "cpu.cfs_period_us"
            if quota.is_file() and period.is_file():
                return parse_cgroup_v1_quota(quota.read_text(), period.read_text())
    except (OSError, ValueError) as e:
        logger.debug("ignoring unreadable cgroup CPU quota under %s: %s", root, e)
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded down, at least 1).

    Rounding down matters: more compute threads than the quota allows get throttled, and oversubscribed
    OpenMP threads collapse throughput.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def configure_threads() -> int:
    """Set torch's intra-op thread count from $OMP_NUM_THREADS, else from available_cpus(). Returns it."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        if not env.strip().isdigit() or int(env) < 1:
            raise UserError(f"OMP_NUM_THREADS={env!r} is not a positive integer; unset it or set e.g. 2")
        threads = int(env)
    else:
        threads = available_cpus()
    torch.set_num_threads(threads)
    return threads


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU when the resolved precision is bf16; a no-op for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
