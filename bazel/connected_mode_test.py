"""What connected mode (Bazel 8, MODULE.bazel) relies on that can be read without a Bazel 8: the worker image's
toolchain is registered first in both modes and selected by --config=remote, local launchers need no system
python3 (remote ones keep the image's interpreter), nothing is read from beside the checkout, and MODULE.bazel.lock
is ignored."""

import os
import re
import unittest
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]  # runfiles root: do not resolve symlinks
IMAGE_TOOLCHAIN = "//bazel/platforms:image_python_toolchain"


def read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


class ConnectedModeTest(unittest.TestCase):
    def test_the_image_toolchain_is_registered_first_in_both_modes(self):
        module = read("MODULE.bazel")
        registered = re.findall(r'register_toolchains\(\s*"([^"]+)"', module)
        self.assertEqual(registered, [IMAGE_TOOLCHAIN], "MODULE.bazel registers it, before rules_python's own")
        workspace = re.search(r"register_toolchains\((.*?)\)", read("WORKSPACE"), re.S).group(1)
        self.assertEqual(re.findall(r'"([^"]+)"', workspace)[0], IMAGE_TOOLCHAIN)

    def test_remote_configs_select_the_image_interpreter(self):
        rc = read(".bazelrc")
        self.assertIn("build:remote --define=cpu_finetune_python=image", rc)
        for config in ("selfhosted", "nativelink"):
            self.assertIn(f"build:{config} --config=remote", rc)
        self.assertIn('define_values = {"cpu_finetune_python": "image"}', read("bazel/BUILD"))

    def test_nothing_is_read_from_beside_the_checkout(self):
        for rel in ("MODULE.bazel", "WORKSPACE", ".bazelrc"):
            text = read(rel)
            self.assertNotIn("../", text, rel)
            self.assertNotRegex(text, r"new_local_repository\(\s*name = \"shared\"", rel)

    def test_module_lock_is_git_ignored(self):
        # Not committed: it cannot be generated without a Bazel 8 (the test cannot see the work tree to check that).
        self.assertIn("/MODULE.bazel.lock", read(".gitignore").splitlines())

    def test_launchers_need_no_system_python_locally_and_keep_the_image_one_remotely(self):
        flag = "--@rules_python//python/config_settings:bootstrap_impl"
        bzlmod = read("bazel/rc/bzlmod.bazelrc").splitlines()
        self.assertIn(f"build {flag}=script", bzlmod)
        self.assertIn(f"build:remote {flag}=system_python", bzlmod)
        self.assertNotIn("@rules_python", read(".bazelrc"), "Bazel 4 reads .bazelrc and has no such flag")


if __name__ == "__main__":
    unittest.main()
