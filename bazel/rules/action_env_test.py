"""Every build action of this repository that runs Python gets a PATH (its launcher needs one: rules_python's
`#!/usr/bin/env python3`, a remote worker that sets nothing else), and only the committed one."""

import json
import os
import re
import unittest
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[2]  # runfiles root: do not resolve symlinks
RULE_FILES = ["bazel/rules/finetune.bzl", "src/experiments/sweep.bzl"]
ACTION_CALL = re.compile(r"ctx\.actions\.(run|run_shell)\(")


def action_env_path() -> str:
    text = (ROOT / "bazel/rules/action_env.bzl").read_text(encoding="utf-8")
    return re.search(r'^ACTION_PATH = "([^"]+)"', text, re.M).group(1)


def call_arguments(text: str, start: int) -> str:
    """The text between the parentheses of the call whose "(" ends at `start`."""
    depth, i = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[start : i - 1]


class ActionEnvTest(unittest.TestCase):
    def test_path_is_the_strict_action_env_one(self):
        self.assertEqual(action_env_path().split(":"), ["/bin", "/usr/bin", "/usr/local/bin"])

    def test_the_finetune_action_environment_has_path(self):
        job = json.loads((ROOT / os.environ["FINETUNE_JOB_JSON"]).read_text(encoding="utf-8"))
        self.assertEqual(job["env"].get("PATH"), action_env_path(), job["env"])
        self.assertEqual(job["env"]["HF_HUB_OFFLINE"], "1")

    def test_every_action_passes_an_environment_built_by_python_action_env(self):
        calls = 0
        for rel in RULE_FILES:
            text = (ROOT / rel).read_text(encoding="utf-8")
            self.assertIn('"python_action_env")', text, f"{rel} does not load python_action_env")
            for match in ACTION_CALL.finditer(text):
                calls += 1
                arguments = call_arguments(text, match.end())
                self.assertNotIn("use_default_shell_env", arguments, rel)
                env = re.search(r"\benv = ([A-Za-z_]+)\(", arguments) or re.search(r"\benv = (env)\b", arguments)
                self.assertIsNotNone(env, f"{rel}: a ctx.actions.{match.group(1)} without env = ...")
                if env.group(1) == "env":  # finetune.bzl: env = _env(...), which returns python_action_env(...)
                    self.assertRegex(text, r"env = _env\(")
                    self.assertRegex(text, r"def _env\([^)]*\):[^#]*?return python_action_env\(", rel)
                else:
                    self.assertEqual(env.group(1), "python_action_env", rel)
        self.assertEqual(calls, 2, "FineTune and GatherSweep")


if __name__ == "__main__":
    unittest.main()
