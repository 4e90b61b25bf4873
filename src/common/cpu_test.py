import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch

from src.common import cpu
from src.common.errors import UserError

AMX_CPU = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16_CPU = frozenset({"avx2", "avx512f", "avx512_bf16"})
PLAIN_CPU = frozenset({"sse4_2", "avx2", "fma", "avx512f"})


class Bf16DetectionTest(unittest.TestCase):
    def test_flags_that_mean_native_bf16(self):
        self.assertTrue(cpu.supports_bf16(AMX_CPU))
        self.assertTrue(cpu.supports_bf16(AVX512_BF16_CPU))
        self.assertTrue(cpu.supports_bf16({"amx_bf16"}))
        self.assertFalse(cpu.supports_bf16(PLAIN_CPU))
        self.assertFalse(cpu.supports_bf16(set()))

    def test_parse_cpu_flags(self):
        text = (
            "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
            "processor\t: 1\nflags\t: fpu\n"
        )
        self.assertEqual(cpu.parse_cpu_flags(text), {"fpu", "avx2", "avx512_bf16", "amx_bf16"})
        self.assertEqual(cpu.parse_cpu_flags("Features\t: fp asimd bf16\n"), {"fp", "asimd", "bf16"})
        self.assertEqual(cpu.parse_cpu_flags(""), frozenset())

    def test_cpu_flags_of_unreadable_file_is_empty(self):
        self.assertEqual(cpu.cpu_flags(Path("/nonexistent/cpuinfo")), frozenset())


class ResolvePrecisionTest(unittest.TestCase):
    def test_auto_picks_bf16_only_where_supported(self):
        self.assertEqual(cpu.resolve_precision("auto", AMX_CPU), "bf16")
        self.assertEqual(cpu.resolve_precision("auto", PLAIN_CPU), "fp32")

    def test_explicit_choices(self):
        self.assertEqual(cpu.resolve_precision("fp32", AMX_CPU), "fp32")
        self.assertEqual(cpu.resolve_precision("bf16", AVX512_BF16_CPU), "bf16")

    def test_bf16_without_support_says_to_use_fp32(self):
        with self.assertRaisesRegex(UserError, "--precision fp32"):
            cpu.resolve_precision("bf16", PLAIN_CPU)

    def test_unknown_precision(self):
        with self.assertRaisesRegex(UserError, "auto, bf16, fp32"):
            cpu.resolve_precision("fp16", AMX_CPU)


class CgroupQuotaTest(unittest.TestCase):
    def test_v2_cpu_max(self):
        self.assertEqual(cpu.parse_cgroup_v2_cpu_max("200000 100000\n"), 2.0)
        self.assertEqual(cpu.parse_cgroup_v2_cpu_max("150000 100000"), 1.5)
        self.assertEqual(cpu.parse_cgroup_v2_cpu_max("50000"), 0.5)  # period defaults to 100 ms
        self.assertIsNone(cpu.parse_cgroup_v2_cpu_max("max 100000\n"))

    def test_v1_cfs_quota(self):
        self.assertEqual(cpu.parse_cgroup_v1_quota("300000\n", "100000\n"), 3.0)
        self.assertIsNone(cpu.parse_cgroup_v1_quota("-1\n", "100000\n"))

    def test_cgroup_cpu_limit_reads_v2_then_v1(self):
        with tempfile.TemporaryDirectory() as root:
            root = Path(root)
            self.assertIsNone(cpu.cgroup_cpu_limit(root))
            (root / "cpu").mkdir()
            (root / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
            (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
            self.assertEqual(cpu.cgroup_cpu_limit(root), 1.0)
            (root / "cpu.max").write_text("400000 100000\n")
            self.assertEqual(cpu.cgroup_cpu_limit(root), 4.0)
            (root / "cpu.max").write_text("garbage\n")
            self.assertIsNone(cpu.cgroup_cpu_limit(root))

    def test_available_cpus_is_capped_by_the_quota_rounded_down(self):
        affinity = len(os.sched_getaffinity(0))
        with mock.patch.object(cpu, "cgroup_cpu_limit", return_value=None):
            self.assertEqual(cpu.available_cpus(), affinity)
        with mock.patch.object(cpu, "cgroup_cpu_limit", return_value=0.5):
            self.assertEqual(cpu.available_cpus(), 1)
        with mock.patch.object(cpu, "cgroup_cpu_limit", return_value=affinity + 0.9):
            self.assertEqual(cpu.available_cpus(), affinity)


class ConfigureThreadsTest(unittest.TestCase):
    def setUp(self):
        self.addCleanup(torch.set_num_threads, torch.get_num_threads())

    def test_omp_num_threads_wins(self):
        with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
            self.assertEqual(cpu.configure_threads(), 1)
        self.assertEqual(torch.get_num_threads(), 1)

    def test_defaults_to_available_cpus(self):
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        with mock.patch.dict(os.environ, env, clear=True):
            self.assertEqual(cpu.configure_threads(), cpu.available_cpus())

    def test_bad_omp_num_threads(self):
        with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "two"}):
            with self.assertRaisesRegex(UserError, "OMP_NUM_THREADS"):
                cpu.configure_threads()


if __name__ == "__main__":
    unittest.main()
