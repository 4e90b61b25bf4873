"""The locks, MODULE.bazel and the running environment agree (the worker image: //docker:worker_image_test).

Runs in both Bazel modes: offline (the venv is the interpreter and must hold exactly the lock's versions) and
connected (rules_python installs the lock's wheels; the packages this test depends on must have the lock's versions).
What it checks of connected mode without a Bazel 8, from the files rules_python 1.6.3 reads:
  - the Linux and macOS locks pin the same versions (torch: +cpu on Linux only) and hash every one;
  - MODULE.bazel maps each lock to its platform;
  - every locked package's declared requirements (its METADATA's Requires-Dist, markers evaluated for Linux x86_64
    and macOS arm64) are in the lock, or are removed by that package's METADATA patch, which MODULE.bazel applies
    with pip.override to the wheel of that exact file name, and which applies cleanly to the real METADATA.
Not checked here: torch's macOS wheel's own METADATA (the running torch is the Linux build; update_lock.sh resolves
the macOS lock with uv for that platform), and that rules_python really fetches and patches (needs Bazel 8).
"""

import base64
import hashlib
import importlib.metadata
import os
import pathlib
import re
import sys
import unittest

from packaging.markers import default_environment
from packaging.requirements import Requirement

# Runfiles, not the source tree: do not resolve symlinks.
ROOT = pathlib.Path(os.path.abspath(__file__)).parents[2]
LINUX_LOCK = ROOT / "bazel_requirements_lock.txt"
DARWIN_LOCK = ROOT / "bazel_requirements_lock_darwin.txt"
NODEPS_IN = ROOT / "bazel_requirements_nodeps.in"
VENV = pathlib.Path("/opt/cpu-finetune/venv")
LOCK_PLATFORMS = {LINUX_LOCK.name: "linux_x86_64", DARWIN_LOCK.name: "osx_aarch64"}
# PEP 508 marker environments of the two host platforms the locks are for (Python 3.11, CPython).
MARKER_ENVIRONMENTS = {
    "linux_x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "osx_aarch64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
}


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


def nodeps_packages() -> dict[str, str]:
    """{normalized name: version} of bazel_requirements_nodeps.in."""
    pins = {}
    for line in NODEPS_IN.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalize(name)] = version
    return pins


def apply_patch(text: str, patch: str, reverse: bool = False) -> str:
    """Apply a unified diff to one file's text, strictly: every context and removed line must match where the hunk
    says (as Bazel's rctx.patch requires). ValueError if it does not apply."""
    lines = text.splitlines(keepends=True)
    out, position = [], 0
    for hunk in re.split(r"(?m)^(?=@@ )", patch)[1:]:
        header, *body = hunk.splitlines(keepends=True)
        old_start = int(re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)", header).group(2 if reverse else 1))
        old, new = [], []
        for line in body:
            tag, content = line[0], line[1:]
            if reverse:
                tag = {"+": "-", "-": "+"}.get(tag, tag)
            if tag in " -":
                old.append(content)
            if tag in " +":
                new.append(content)
        start = old_start - 1
        if lines[start : start + len(old)] != old:
            raise ValueError(f"hunk {header.strip()} does not apply at line {old_start}")
        out += lines[position:start] + new
        position = start + len(old)
    return "".join(out + lines[position:])


def file_patches(patch: str) -> dict[str, str]:
    """A multi-file unified diff split into {path after "--- a/": that file's diff}."""
    return {
        re.match(r"--- a/(\S+)", part).group(1): part
        for part in re.split(r"(?m)^(?=--- a/)", patch)
        if part.startswith("--- a/")
    }


def record_line(dist_info: str, metadata: str) -> str:
    """METADATA's line in a wheel's RECORD: path, sha256 (urlsafe base64, unpadded), size."""
    data = metadata.encode("utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{dist_info}/METADATA,sha256={digest},{len(data)}"


def unpatch_targets(module_text: str) -> dict[str, tuple[str, list[str]]]:
    """MODULE.bazel's pip.override entries: {wheel file name: (patch_strip, [patch labels])}."""
    overrides = {}
    for body in re.findall(r"pip\.override\((.*?)\n\)", module_text, re.S):
        file = re.search(r'file = "([^"]+)"', body).group(1)
        strip = re.search(r"patch_strip = (\d+)", body).group(1)
        patches = re.findall(r'"(//[^"]+\.patch)"', body)
        overrides[file] = (strip, patches)
    return overrides


def label_path(label: str) -> pathlib.Path:
    package, name = label.removeprefix("//").split(":")
    return ROOT / package / name


class LockTest(unittest.TestCase):
    def setUp(self):
        self.pins = read_pins(LINUX_LOCK)
        self.darwin_pins = read_pins(DARWIN_LOCK)
        self.module = (ROOT / "MODULE.bazel").read_text()

    def test_every_requirement_is_pinned_and_hashed(self):
        for lock in (LINUX_LOCK, DARWIN_LOCK):
            blocks = requirement_blocks(lock)
            self.assertGreater(len(blocks), 20, lock.name)
            for block in blocks:
                self.assertRegex(block.splitlines()[0], r"==", block)
                self.assertIn("--hash=sha256:", block, f"{lock.name}: unhashed requirement: {block.splitlines()[0]}")

    def test_torch_is_a_cpu_build(self):
        self.assertTrue(self.pins["torch"].endswith("+cpu"), self.pins["torch"])
        for pins in (self.pins, self.darwin_pins):
            self.assertFalse(any(name.startswith("nvidia_") for name in pins), "CUDA wheels in a lock")

    def test_the_locks_pin_the_same_versions(self):
        self.assertEqual(set(self.darwin_pins), set(self.pins))
        for name, version in self.pins.items():
            expected = version.removesuffix("+cpu") if name == "torch" else version
            self.assertEqual(self.darwin_pins[name], expected, name)
        self.assertNotIn("+", self.darwin_pins["torch"], "PyPI's macOS torch has no local version label")

    def test_top_level_requirements_are_locked(self):
        for path in (ROOT / "bazel_requirements.in", NODEPS_IN):
            for line in path.read_text().splitlines():
                line = line.split("#")[0].strip()
                if line:
                    name = normalize(re.split(r"[=<>!~\[; ]", line)[0])
                    self.assertIn(name, self.pins, f"{name} from {path.name} is not in the lock")

    def test_module_bazel_maps_each_lock_to_its_platform_and_the_same_python(self):
        by_platform = re.search(r"requirements_by_platform = \{(.*?)\}", self.module, re.S).group(1)
        mapping = dict(re.findall(r'"//:([^"]+)": "([^"]+)"', by_platform))
        self.assertEqual(mapping, LOCK_PLATFORMS)
        self.assertNotIn("requirements_lock =", self.module, "one lock for every platform cannot hold torch")
        version = re.search(r'PYTHON_VERSION = "(\d+\.\d+)"', self.module).group(1)
        self.assertEqual(version, "%d.%d" % sys.version_info[:2], "MODULE.bazel's Python differs from the running one")
        self.assertIn("download.pytorch.org/whl/cpu", self.module)

    def test_nodeps_wheels_are_patched_by_exact_file_name(self):
        overrides = unpatch_targets(self.module)
        expected = {f"{name}-{version}-py3-none-any.whl" for name, version in nodeps_packages().items()}
        self.assertEqual(set(overrides), expected)
        for name, version in nodeps_packages().items():
            wheel_tags = importlib.metadata.distribution(name).read_text("WHEEL")
            self.assertIn("Tag: py3-none-any", wheel_tags, name)  # so the file name above is the wheel's
            strip, patches = overrides[f"{name}-{version}-py3-none-any.whl"]
            self.assertEqual(strip, "1")
            self.assertEqual(len(patches), 1)
            dist_info = f"{name}-{version}.dist-info"
            parts = file_patches(label_path(patches[0]).read_text(encoding="utf-8"))
            self.assertEqual(set(parts), {f"{dist_info}/METADATA", f"{dist_info}/RECORD"})
            # The RECORD hunk gives the patched METADATA's hash and size, so rules_python's repacked wheel matches
            # the RECORD it claims (else it warns on every fetch).
            installed = importlib.metadata.distribution(name).read_text("METADATA")
            patched = self.patched_metadata(name, installed, parts[f"{dist_info}/METADATA"])
            self.assertIn("+" + record_line(dist_info, patched) + "\n", parts[f"{dist_info}/RECORD"])

    def test_declared_requirements_are_locked_or_patched_away(self):
        """rules_python (pipstar off) makes every Requires-Dist a hub dependency: each must be in the lock."""
        patches = {}
        for file, (_, labels) in unpatch_targets(self.module).items():
            name, version = file.split("-")[:2]
            parts = file_patches(label_path(labels[0]).read_text(encoding="utf-8"))
            patches[name] = parts[f"{name}-{version}.dist-info/METADATA"]
        missing = []
        for name in self.pins:
            metadata = importlib.metadata.distribution(name).read_text("METADATA")
            if name in patches:
                metadata = self.patched_metadata(name, metadata, patches[name])
            for line in re.findall(r"(?m)^Requires-Dist: (.+)$", metadata):
                requirement = Requirement(line)
                for platform, markers in MARKER_ENVIRONMENTS.items():
                    environment = default_environment() | markers | {"python_version": "3.11", "extra": ""}
                    applies = requirement.marker is None or requirement.marker.evaluate(environment)
                    if applies and normalize(requirement.name) not in self.pins:
                        missing.append(f"{name} -> {requirement.name} ({platform})")
        self.assertEqual(sorted(set(missing)), [], "declared requirements that are neither locked nor patched away")

    def patched_metadata(self, name: str, installed: str, patch: str) -> str:
        """The METADATA rules_python sees: the installed one patched (offline venv: the wheel's original), or the
        installed one itself if it already is the patched one (connected mode installs the patched wheel)."""
        try:
            return apply_patch(installed, patch)
        except ValueError:
            apply_patch(installed, patch, reverse=True)  # raises unless it is exactly the patched text
            return installed

    def test_the_strict_patcher_rejects_a_patch_that_does_not_apply(self):
        patch = "--- a/M\n+++ b/M\n@@ -2,2 +2,1 @@\n b\n-c\n"
        self.assertEqual(apply_patch("a\nb\nc\nd\n", patch), "a\nb\nd\n")
        with self.assertRaises(ValueError):
            apply_patch("a\nx\nc\nd\n", patch)

    def test_environment_has_the_locked_versions(self):
        for name in ("torch", "transformers", "datasets", "accelerate", "peft", "huggingface_hub"):
            self.assertEqual(importlib.metadata.version(name), self.pins[name], name)

    def test_offline_venv_matches_the_whole_lock(self):
        if pathlib.Path(sys.prefix) != VENV:
            self.skipTest(f"not running from the offline venv {VENV} (connected mode)")
        installed = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
        mismatches = {n: (v, installed.get(n)) for n, v in self.pins.items() if installed.get(n) != v}
        self.assertEqual(mismatches, {}, "lock version vs venv version")

    def test_venv_path_is_the_same_everywhere(self):
        for rel in ("bazel/offline/venv.bzl", "docker/worker_image.bzl", "tools/setup.sh"):
            self.assertIn(str(VENV), (ROOT / rel).read_text(), rel)


if __name__ == "__main__":
    unittest.main()
