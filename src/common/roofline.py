"""The machine's matmul roof: measured GFLOP/s of torch.mm on a model's own shapes, per dtype.

Benchmarks divide the training FLOP/s they achieve by this roof, measured in the same run (this machine is shared
and noisy: ratios from one run are comparable, absolute figures from different runs much less so).
"""

from collections.abc import Sequence
from time import perf_counter

import torch

Shape = tuple[int, int, int]  # (m, k, n): an [m x k] @ [k x n] matmul


def matmul_roof(dtype: torch.dtype, shapes: Sequence[Shape], budget_s: float = 0.5) -> dict[str, float]:
    """GFLOP/s of torch.mm per shape, and the best of them as "roof".

    Each shape repeats until `budget_s` has passed (at least once), so a dtype the CPU only emulates
    (bf16 without AVX512-BF16/AMX is ~100x slower) costs seconds, not minutes.
    """
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)  # warm-up: kernel selection
        repeats, start = 0, perf_counter()
        while repeats == 0 or perf_counter() - start < budget_s:
            torch.mm(a, b)
            repeats += 1
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n * repeats / (perf_counter() - start) / 1e9
    rates["roof"] = max(rates.values())
    return rates
