"""The lock, MODULE.bazel, the worker Dockerfile and the running environment agree.

Runs in both Bazel modes: offline (the venv is the interpreter and must hold
exactly the lock's versions) and connected (rules_python installs the lock's
wheels; the packages this test depends on must have the lock's versions).
"""

import importlib.metadata
import os
import pathlib
import re
import sys
import unittest

# Runfiles, not the source tree: do not resolve symlinks.
ROOT = pathlib.Path(os.path.abspath(__file__)).parents[2]
LOCK = ROOT / "bazel_requirements_lock.txt"
VENV = pathlib.Path("/opt/cpu-finetune/venv")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def read_pins(path: pathlib.Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[normalize(match.group(1))] = match.group(3)
    return pins


def requirement_blocks(path: pathlib.Path) -> list[str]:
    """Each pinned requirement with its continuation lines."""
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = [line]
            blocks.append(current)
        elif current is not None and line.startswith("    "):
            current.append(line)
    return ["\n".join(b) for b in blocks]


class LockTest(unittest.TestCase):
    def setUp(self):
        self.pins = read_pins(LOCK)

    def test_every_requirement_is_pinned_and_hashed(self):
        blocks = requirement_blocks(LOCK)
        self.assertGreater(len(blocks), 20)
        for block in blocks:
            self.assertRegex(block.splitlines()[0], r"==", block)
            self.assertIn("--hash=sha256:", block, f"unhashed requirement: {block.splitlines()[0]}")

    def test_torch_is_a_cpu_build(self):
        self.assertTrue(self.pins["torch"].endswith("+cpu"), self.pins["torch"])
        self.assertFalse(any(name.startswith("nvidia_") for name in self.pins), "CUDA wheels in the lock")

    def test_top_level_requirements_are_locked(self):
        for path in (ROOT / "bazel_requirements.in", ROOT / "bazel_requirements_nodeps.in"):
            for line in path.read_text().splitlines():
                line = line.split("#")[0].strip()
                if line:
                    name = normalize(re.split(r"[=<>!~\[; ]", line)[0])
                    self.assertIn(name, self.pins, f"{name} from {path.name} is not in the lock")

    def test_module_bazel_uses_the_lock_and_the_same_python(self):
        module = (ROOT / "MODULE.bazel").read_text()
        self.assertIn('requirements_lock = "//:bazel_requirements_lock.txt"', module)
        version = re.search(r'PYTHON_VERSION = "(\d+\.\d+)"', module).group(1)
        self.assertEqual(version, "%d.%d" % sys.version_info[:2], "MODULE.bazel's Python differs from the running one")
        self.assertIn("download.pytorch.org/whl/cpu", module)

    def test_environment_has_the_locked_versions(self):
        for name in ("torch", "transformers", "datasets", "accelerate", "peft", "huggingface_hub"):
            self.assertEqual(importlib.metadata.version(name), self.pins[name], name)

    def test_offline_venv_matches_the_whole_lock(self):
        if pathlib.Path(sys.prefix) != VENV:
            self.skipTest(f"not running from the offline venv {VENV} (connected mode)")
        installed = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
        mismatches = {n: (v, installed.get(n)) for n, v in self.pins.items() if installed.get(n) != v}
        self.assertEqual(mismatches, {}, "lock version vs venv version")

    def test_worker_image_installs_the_lock(self):
        dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
        self.assertIn("bazel_requirements_lock.txt", dockerfile)
        self.assertIn("--require-hashes", dockerfile)
        self.assertIn(str(VENV), dockerfile, "the image must put the venv where python_provider.sh looks")
        self.assertRegex(dockerfile, r"FROM [^\s]+@sha256:[0-9a-f]{64}", "base image not pinned by digest")
        self.assertRegex(dockerfile, r"python:%d\.%d" % sys.version_info[:2])
        self.assertRegex(dockerfile, r"(?m)^USER (?!root)")

    def test_offline_venv_path_is_the_same_everywhere(self):
        for rel in ("bazel/offline/venv.bzl", "python_provider.sh"):
            self.assertIn(str(VENV), (ROOT / rel).read_text(), rel)


if __name__ == "__main__":
    unittest.main()
