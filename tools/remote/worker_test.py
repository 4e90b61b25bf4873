"""Unit tests of the worker's parts that need no server: input-tree materialisation,
output collection (files, directories as Tree messages), running a command with
its environment and timeout, and running it inside an image (a tiny real one: bash
and its libraries, written as an OCI layout by oci.py, verified, unpacked, run in
bubblewrap).

They need BuildGrid's protos, so they run in the deployment's venv, not under
`bazel test //...`; tools/remote/integration_test.sh runs them:
    /opt/cpu-finetune/remote-venv/bin/python tools/remote/worker_test.py
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import oci
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


# --- Images ----------------------------------------------------------------------

EPOCH = 1_700_000_000


def bash_root(root: Path, marker: str = "tiny image") -> Path:
    """A root directory in which bash runs: /bin/bash, the libraries it links, the worker image's mount points."""
    libraries = [line.split()[-2] if "=>" in line else line.split()[0]
                 for line in subprocess.run(["ldd", "/bin/bash"], capture_output=True, text=True, check=True)
                 .stdout.splitlines() if "/" in line]
    for source in ["/bin/bash", *libraries]:
        target = root / source.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(source), target)
    for directory in ("tmp", "action", "home/worker", "etc", "proc", "dev"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "marker").write_text(marker)
    (root / "opt" / "venv").mkdir(parents=True)
    (root / "opt" / "venv" / "python").write_text("not really")
    return root


def write_image(root: Path, layout: Path) -> str:
    config = oci.ImageConfig("10001:10001", ("PATH=/bin",), "/home/worker", {"k": "v"}, ("base", "venv"))
    return oci.write_layout(root, layout, "opt/venv", EPOCH, config, "latest")


class OciTest(unittest.TestCase):
    def test_same_root_same_digest_whatever_the_times(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = bash_root(Path(tmp) / "root")
            first = write_image(root, Path(tmp) / "a")
            os.utime(root / "etc" / "marker", (0, 0))
            (root / "tmp" / "x").write_text("x")
            (root / "tmp" / "x").unlink()
            self.assertEqual(write_image(root, Path(tmp) / "b"), first)
            (root / "etc" / "marker").write_text("changed")
            self.assertNotEqual(write_image(root, Path(tmp) / "c"), first)

    def test_verify_rejects_another_digest_and_a_tampered_layer(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            layout = Path(tmp) / "layout"
            digest = write_image(bash_root(Path(tmp) / "root"), layout)
            self.assertEqual(oci.verify(layout, digest).digest, digest)
            with self.assertRaisesRegex(oci.ImageError, "not sha256:0+"):
                oci.verify(layout, "sha256:" + "0" * 64)
            image = oci.verify(layout)
            layer = image.blob(image.manifest["layers"][1]["digest"])
            data = bytearray(layer.read_bytes())
            data[len(data) // 2] ^= 0xFF
            layer.write_bytes(bytes(data))
            with self.assertRaisesRegex(oci.ImageError, "layer 1 blob .* does not match its digest"):
                oci.verify(layout, digest)

    def test_two_layers_split_at_the_venv_and_unpack_whole(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            layout = Path(tmp) / "layout"
            write_image(bash_root(Path(tmp) / "root"), layout)
            image = oci.verify(layout)
            self.assertEqual(len(image.manifest["layers"]), 2)
            self.assertEqual(image.config["config"]["User"], "10001:10001")
            unpacked = oci.unpack(image, Path(tmp) / "unpacked")
            self.assertEqual((unpacked / "opt" / "venv" / "python").read_text(), "not really")
            self.assertTrue(os.access(unpacked / "bin" / "bash", os.X_OK))
            self.assertEqual(list(Path(tmp).glob(".unpacked.partial-*")), [])


class ImageSandboxTest(unittest.TestCase):
    """Runs commands in a real (tiny) image through Images, as the worker does."""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)
        self.name = "docker://example.org/tiny@" + write_image(bash_root(self.tmp / "root"), self.tmp / "layout")
        self.images = worker.Images({self.name: self.tmp / "layout"}, self.tmp / "cache")
        self.input_root = self.tmp / "input"
        (self.input_root / "pkg").mkdir(parents=True)
        (self.input_root / "pkg" / "in.txt").write_text("input\n")

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def run_in(self, script: str, properties: dict[str, str] | None = None, timeout: float | None = None,
               env: dict[str, str] | None = None) -> tuple[int, bool, str, str]:
        command = re_pb2.Command(
            arguments=["/bin/bash", "-c", script], working_directory="pkg",
            environment_variables=[re_pb2.Command.EnvironmentVariable(name=k, value=v) for k, v in (env or {}).items()],
        )
        sandbox = self.images.sandbox(properties if properties is not None else {"container-image": self.name})
        exit_code, timed_out, stdout, stderr = worker.run_command(
            command, self.input_root, timeout, self.tmp, sandbox=sandbox)
        return exit_code, timed_out, stdout.decode(), stderr.decode()

    def test_runs_in_the_image_not_on_the_host(self) -> None:
        host_only = self.tmp / "host-only"
        host_only.write_text("x")
        code, _, out, err = self.run_in(
            f'echo "$(< /etc/marker) $PWD $EUID"; [[ -e {host_only} || -e /usr/bin/python3 ]] && echo HOST; exit 3')
        self.assertEqual((code, out, err), (3, "tiny image /action/pkg 10001\n", ""))

    def test_root_is_read_only_and_tmp_home_and_the_input_root_are_writable(self) -> None:
        code, _, out, err = self.run_in(
            'echo > /etc/new 2>/dev/null && echo WROTE-ROOT; echo t > /tmp/t && echo h > /home/worker/h && echo $(< in.txt) > out.txt; echo ok')
        self.assertEqual((code, out), (0, "ok\n"), err)
        self.assertEqual((self.input_root / "pkg" / "out.txt").read_text(), "input\n")
        self.assertEqual(list((self.tmp / "cache").glob("*/tmp/t")), [], "the image's /tmp was written")

    def test_exactly_the_actions_environment(self) -> None:
        os.environ["WORKER_TEST_LEAK"] = "leaked"
        _, _, out, _ = self.run_in('echo "[$GREETING][${WORKER_TEST_LEAK:-}][${HOME:-}]"', env={"GREETING": "hi"})
        self.assertEqual(out, "[hi][][]\n")

    def test_no_network_unless_asked(self) -> None:
        # Interface names from /proc/net/dev (two header lines), with bash alone.
        script = 'n=0; while read -r line; do n=$((n + 1)); ((n > 2)) && echo "${line%%:*}"; done < /proc/net/dev'
        _, _, out, _ = self.run_in(script)
        self.assertEqual(out.split(), ["lo"])
        _, _, out, _ = self.run_in(script, {"container-image": self.name, "dockerNetwork": "standard"})
        host = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
        self.assertEqual(sorted(out.split()), sorted(host))

    def test_timeout_kills_the_sandboxed_command(self) -> None:
        start = time.monotonic()
        code, timed_out, out, _ = self.run_in("read -t 30 < /dev/zero; while :; do :; done", timeout=0.5)
        self.assertTrue(timed_out)
        self.assertLess(time.monotonic() - start, 10)

    def test_no_network_at_all_when_the_worker_gives_none(self) -> None:
        images = worker.Images({self.name: self.tmp / "layout"}, self.tmp / "cache", allow_network=False)
        with self.assertRaisesRegex(worker.Refused, "gives actions no network"):
            images.sandbox({"container-image": self.name, "dockerNetwork": "standard"})
        self.assertFalse(images.sandbox({"container-image": self.name}).network)
        self.assertTrue(self.images.sandbox({"container-image": self.name, "dockerNetwork": "standard"}).network)

    def test_an_image_not_held_is_refused_naming_the_ones_held(self) -> None:
        with self.assertRaisesRegex(worker.Refused, r"no image 'docker://other@sha256:.*it has: 'docker://example.org/tiny@sha256:"):
            self.images.sandbox({"container-image": "docker://other@sha256:" + "1" * 64})
        self.assertEqual(self.images.sandbox({}).rootfs, self.images.roots[self.name])

    def test_an_image_name_must_pin_the_layouts_digest(self) -> None:
        with self.assertRaisesRegex(ValueError, "does not pin a digest"):
            worker.image_digest("docker://example.org/tiny:latest")
        with self.assertRaisesRegex(oci.ImageError, "holds image sha256:.*, not sha256:2+"):
            worker.Images({"docker://x@sha256:" + "2" * 64: self.tmp / "layout"}, self.tmp / "cache2")



class TlsArgumentsTest(unittest.TestCase):
    """TLS files are checked before the worker starts: one line and exit 2 (the connection itself, accepted or
    refused by a mutual-TLS BuildGrid, is integration_test.sh's "tls" section)."""

    def main_exits(self, *argv: str) -> str:
        with tempfile.TemporaryDirectory() as tmp, self.assertRaises(SystemExit) as raised:
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                worker.main(["--work-dir", tmp, *argv])
        self.assertEqual(raised.exception.code, 2)
        self.assertEqual(len(stderr.getvalue().strip().splitlines()), 1, stderr.getvalue())
        return stderr.getvalue()

    def test_tls_files_need_grpcs(self) -> None:
        self.assertIn("need a grpcs:// --server", self.main_exits("--server", "grpc://127.0.0.1:1", "--tls-ca", __file__))

    def test_cert_and_key_go_together(self) -> None:
        self.assertIn("go together", self.main_exits("--server", "grpcs://127.0.0.1:1", "--tls-cert", __file__))

    def test_a_missing_file_is_named(self) -> None:
        self.assertIn("no such TLS file: /nonexistent/ca.crt",
                      self.main_exits("--server", "grpcs://127.0.0.1:1", "--tls-ca", "/nonexistent/ca.crt"))

    def test_handshake_hints(self) -> None:
        self.assertIn("client certificate", worker.handshake_hint("ipv4:127.0.0.2:50061: Socket closed"))
        self.assertIn("--tls-ca", worker.handshake_hint("Handshake failed: CERTIFICATE_VERIFY_FAILED"))
        self.assertEqual(worker.handshake_hint("Failed to connect to remote host: Connection refused"), "")


if __name__ == "__main__":
    unittest.main()
