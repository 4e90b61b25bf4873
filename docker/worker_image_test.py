"""The worker image's pin (docker/worker_image.bzl) is fresh and real, and the recipe (docker/build.sh) agrees with
the rest of the repository: the image toolchain's interpreter, MODULE.bazel's Python, the worker's sandbox.

Fresh means: WORKER_IMAGE_INPUTS is the digest of the files the image is built from (tools/remote/oci.py:
IMAGE_INPUTS: the lock, the recipe, the Debian package pins, the layout writer). Change any of them and this test
fails until someone rebuilds and re-pins (`sudo docker/build.sh --pin`); CI then checks that the build gives exactly
the pinned digest (docker/build.sh --check-pin).
"""

import os
import re
import shlex
import unittest
from pathlib import Path

from tools.remote import oci

ROOT = Path(os.path.abspath(__file__)).parents[1]  # the repository (in runfiles under Bazel)
BUILD_SH = (ROOT / "docker" / "build.sh").read_text()


def recipe_value(name: str) -> str:
    """A `name=value` line of docker/build.sh's recipe block."""
    match = re.search(rf"(?m)^{name}=(\S+)", BUILD_SH)
    assert match, f"docker/build.sh sets no {name}="
    return match.group(1)


def recipe_packages() -> list[str]:
    match = re.search(r"(?m)^packages=\(([^)]*)\)", BUILD_SH)
    assert match, "docker/build.sh sets no packages=(...)"
    return shlex.split(match.group(1))


class PinTest(unittest.TestCase):
    def setUp(self) -> None:
        self.pin = oci.read_pin(ROOT)

    def test_the_pin_is_not_stale(self) -> None:
        self.assertEqual(
            self.pin["WORKER_IMAGE_INPUTS"], oci.inputs_digest(ROOT),
            f"docker/worker_image.bzl is stale: one of {', '.join(oci.IMAGE_INPUTS)} changed since the image was "
            "built; rebuild and re-pin it with: sudo docker/build.sh --pin",
        )

    def test_the_pin_is_a_real_digest(self) -> None:
        digest = self.pin["WORKER_IMAGE_DIGEST"]
        self.assertRegex(digest, r"^sha256:[0-9a-f]{64}$")
        self.assertNotEqual(set(digest.removeprefix("sha256:")), {"0"}, "the all-zero placeholder is not a digest")
        self.assertEqual(self.pin["WORKER_IMAGE"], f"docker://{self.pin['WORKER_IMAGE_REPOSITORY']}@{digest}")

    def test_the_remote_platform_reads_the_pin(self) -> None:
        platforms = (ROOT / "bazel" / "platforms" / "BUILD").read_text()
        self.assertIn('load("//docker:worker_image.bzl", "WORKER_IMAGE", "WORKER_PYTHON")', platforms)
        self.assertIn('"container-image": WORKER_IMAGE,', platforms)
        self.assertIn("interpreter_path = WORKER_PYTHON,", platforms)


class RecipeTest(unittest.TestCase):
    def test_the_venv_is_where_the_image_toolchain_looks(self) -> None:
        self.assertEqual(recipe_value("venv") + "/bin/python3", oci.read_pin(ROOT)["WORKER_PYTHON"])

    def test_the_python_is_module_bazels(self) -> None:
        module = (ROOT / "MODULE.bazel").read_text()
        version = re.search(r'(?m)^PYTHON_VERSION = "(3\.\d+)"', module).group(1)
        self.assertIn(f"python{version}", recipe_packages())
        self.assertIn(f"python{version}-venv", recipe_packages())

    def test_the_lock_is_installed_exactly_with_no_network(self) -> None:
        for needed in ("--no-deps --require-hashes", "--no-index", "--unshare-all", "bazel_requirements_lock.txt"):
            self.assertIn(needed, BUILD_SH)

    def test_every_included_package_is_pinned(self) -> None:
        pinned = {line.split("=", 1)[0] for line in (ROOT / "docker" / "debian_packages.lock").read_text().splitlines()
                  if line and not line.startswith("#")}
        self.assertLessEqual(set(recipe_packages()), pinned, "docker/debian_packages.lock lacks an included package")

    def test_the_user_and_mount_point_are_the_sandboxs(self) -> None:
        worker = (ROOT / "tools" / "remote" / "worker.py").read_text()
        self.assertIn(f"ACTION_UID = {recipe_value('uid')}", worker)
        self.assertIn(f'ACTION_ROOT = "{recipe_value("action_root")}"', worker)
        self.assertIn(f'ACTION_HOME = "/home/{recipe_value("user")}"', worker)
        self.assertNotEqual(recipe_value("uid"), "0")


if __name__ == "__main__":
    unittest.main()
