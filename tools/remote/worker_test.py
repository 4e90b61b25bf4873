"""Unit tests of the worker's parts that need no server: input-tree materialisation,
output collection (files, directories as Tree messages), running a command with
its environment and timeout.

They need BuildGrid's protos, so they run in the deployment's venv, not under
`bazel test //...`; tools/remote/integration_test.sh runs them:
    /opt/cpu-finetune/remote-venv/bin/python tools/remote/worker_test.py
"""

from __future__ import annotations

import os
import tempfile
import time
import unittest
from pathlib import Path

import worker
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2


def tree_of(files: dict[str, tuple[bytes, bool]], links: dict[str, str]) -> tuple[re_pb2.Digest, dict, dict]:
    """A two-level input tree: top-level `files`/`links` plus a `sub/` directory
    holding the same files; returns (root digest, directories, blobs)."""
    blobs: dict[tuple[str, int], bytes] = {}

    def directory(with_sub: re_pb2.DirectoryNode | None) -> re_pb2.Directory:
        message = re_pb2.Directory()
        for name, (data, executable) in sorted(files.items()):
            digest = worker.digest_of(data)
            blobs[worker.digest_key(digest)] = data
            message.files.add(name=name, digest=digest, is_executable=executable)
        for name, target in sorted(links.items()):
            message.symlinks.add(name=name, target=target)
        if with_sub is not None:
            message.directories.append(with_sub)
        return message

    sub = directory(None)
    sub_digest = worker.digest_of(sub.SerializeToString())
    root = directory(re_pb2.DirectoryNode(name="sub", digest=sub_digest))
    root_digest = worker.digest_of(root.SerializeToString())
    directories = {worker.digest_key(root_digest): root, worker.digest_key(sub_digest): sub}
    return root_digest, directories, blobs


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class MaterialiseTest(unittest.TestCase):
    def test_files_executable_bits_symlinks_and_subdirectories(self) -> None:
        root, directories, blobs = tree_of(
            {"run.sh": (b"#!/bin/sh\necho hi\n", True), "data.txt": (b"data", False)},
            {"link": "data.txt"},
        )
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "root"
            worker.materialise(root, directories, blobs, target)
            for base in (target, target / "sub"):
                self.assertEqual((base / "data.txt").read_bytes(), b"data")
                self.assertTrue(os.access(base / "run.sh", os.X_OK))
                self.assertFalse(os.access(base / "data.txt", os.X_OK))
                self.assertTrue((base / "link").is_symlink())
                self.assertEqual(os.readlink(base / "link"), "data.txt")
                self.assertEqual((base / "link").read_bytes(), b"data")

    def test_rejects_path_components_that_escape(self) -> None:
        root, directories, blobs = tree_of({"../escape": (b"x", False)}, {})
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaises(ValueError):
                worker.materialise(root, directories, blobs, Path(tmp) / "root")


class CollectOutputsTest(unittest.TestCase):
    def test_files_and_directories_as_trees(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp)
            (cwd / "out").mkdir()
            (cwd / "out" / "a.txt").write_bytes(b"a")
            (cwd / "out" / "nested").mkdir()
            (cwd / "out" / "nested" / "tool").write_bytes(b"#!/bin/sh\n")
            (cwd / "out" / "nested" / "tool").chmod(0o755)
            (cwd / "file.bin").write_bytes(b"file")
            command = re_pb2.Command(output_files=["file.bin", "missing.txt"], output_directories=["out"])

            outputs = worker.collect_outputs(cwd, command)

            self.assertEqual([f.path for f in outputs.files], ["file.bin"])
            self.assertEqual(outputs.blobs[worker.digest_key(outputs.files[0].digest)], b"file")
            self.assertEqual(len(outputs.directories), 1)
            tree = re_pb2.Tree()
            tree.ParseFromString(outputs.blobs[worker.digest_key(outputs.directories[0].tree_digest)])
            self.assertEqual([f.name for f in tree.root.files], ["a.txt"])
            self.assertEqual([d.name for d in tree.root.directories], ["nested"])
            (nested,) = tree.children
            self.assertEqual(worker.digest_of(nested.SerializeToString()), tree.root.directories[0].digest)
            self.assertTrue(nested.files[0].is_executable)
            self.assertFalse(tree.root.files[0].is_executable)

    def test_output_paths_take_precedence(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp)
            (cwd / "x").write_bytes(b"x")
            (cwd / "y").write_bytes(b"y")
            command = re_pb2.Command(output_paths=["x"], output_files=["y"])
            self.assertEqual([f.path for f in worker.collect_outputs(cwd, command).files], ["x"])


class RunCommandTest(unittest.TestCase):
    def test_environment_cwd_and_exit_code(self) -> None:
        command = re_pb2.Command(
            arguments=["/bin/sh", "-c", 'echo "$GREETING from $(pwd)"; echo oops >&2; exit 7'],
            environment_variables=[re_pb2.Command.EnvironmentVariable(name="GREETING", value="hello")],
        )
        with tempfile.TemporaryDirectory() as tmp:
            exit_code, timed_out, stdout, stderr = worker.run_command(command, Path(tmp), None, Path(tmp))
            self.assertEqual((exit_code, timed_out), (7, False))
            self.assertEqual(stdout.decode(), f"hello from {os.path.realpath(tmp)}\n")
            self.assertEqual(stderr, b"oops\n")

    def test_no_environment_leaks_in(self) -> None:
        os.environ["WORKER_TEST_LEAK"] = "leaked"
        command = re_pb2.Command(arguments=["/bin/sh", "-c", 'echo "[${WORKER_TEST_LEAK:-}]"'])
        with tempfile.TemporaryDirectory() as tmp:
            _, _, stdout, _ = worker.run_command(command, Path(tmp), None, Path(tmp))
        self.assertEqual(stdout, b"[]\n")

    def test_timeout_kills_the_process_group(self) -> None:
        command = re_pb2.Command(arguments=["/bin/sh", "-c", "sleep 30 & sleep 30; echo never"])
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            exit_code, timed_out, stdout, _ = worker.run_command(command, Path(tmp), 0.5, Path(tmp))
            self.assertTrue(timed_out)
            self.assertNotEqual(exit_code, 0)
            self.assertEqual(stdout, b"")
            self.assertLess(time.monotonic() - start, 10)

    def test_timeout_kills_other_process_groups_of_the_session(self) -> None:
        # `set -m` puts the background sleep in a process group of its own, as
        # Bazel's test-setup.sh does with the test.
        with tempfile.TemporaryDirectory() as tmp:
            pid_file = Path(tmp) / "pid"
            command = re_pb2.Command(arguments=["/bin/bash", "-c", f"set -m; sleep 60 & echo $! > {pid_file}; wait"])
            _, timed_out, _, _ = worker.run_command(command, Path(tmp), 0.5, Path(tmp))
            self.assertTrue(timed_out)
            time.sleep(0.2)
            self.assertFalse(alive(int(pid_file.read_text())))


class CancelTest(unittest.TestCase):
    def test_a_lease_cancelled_before_its_command_starts_kills_it_on_start(self) -> None:
        running = worker.RunningLease(lease_id="lease")
        running.cancel()
        command = re_pb2.Command(arguments=["/bin/sh", "-c", "sleep 30"])
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            exit_code, timed_out, _, _ = worker.run_command(command, Path(tmp), None, Path(tmp), running.started)
        self.assertEqual((exit_code, timed_out), (-9, False))
        self.assertLess(time.monotonic() - start, 10)


if __name__ == "__main__":
    unittest.main()
