"""A small Remote Workers API worker for BuildGrid (or any RWAPI server).

One worker runs one action at a time:

1. CreateBotSession with the worker's platform properties (OSFamily=Linux, ...),
   then a loop of UpdateBotSession (a long poll while idle, a heartbeat every few
   seconds while busy, so the server's bot keepalive never expires).
2. A lease carries an Action (or its digest). The worker fetches the Command and
   the input tree from CAS (BatchReadBlobs; ByteStream for large blobs) and
   materialises the tree in a fresh directory of its own (executable bits and
   symlinks kept).
3. It runs the command inside the worker image the action names (its
   `container-image` platform property, which must be one of the images this worker
   holds, byte for byte): bubblewrap with the image's unpacked root read-only as `/`,
   the input root bound at /action, a private /tmp and home, new user (uid 10001),
   PID, IPC, UTS and network namespaces (the network stays only for an action with
   `dockerNetwork=standard`), exactly the action's environment, working directory
   and timeout. Each image is verified against its digest and unpacked once (in
   --image-cache). An action naming another image is refused with the list of the
   images this worker has. Without --image the command runs on the host. It then uploads the outputs (files; directories as Tree messages),
   stdout and stderr, and completes the lease with an ActionResult: a command
   that exits non-zero is an OK lease with that exit code; a timeout is
   DEADLINE_EXCEEDED; a failure of the worker itself (CAS, disk) is INTERNAL, which
   the server retries on another worker.

Run it from the deployment's venv (tools/remote/selfhosted.sh does):
    python tools/remote/worker.py --server grpc://127.0.0.1:50051 --instance main --work-dir DIR \
        --image docker://ghcr.io/cpu-finetune/worker@sha256:HEX=/path/to/oci-layout
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import grpc
import oci
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from buildgrid._protos.google.rpc import code_pb2, status_pb2

LOG = logging.getLogger("worker")

# --- Defaults (one place) ---------------------------------------------------------
DEFAULT_SERVER = "grpc://127.0.0.1:50051"
DEFAULT_INSTANCE = "main"
# Properties this worker offers (besides one container-image per --image). BuildGrid
# matches jobs on the keys its property set lists as match keys (OSFamily here);
# container-image is a wildcard key there, so the worker itself refuses an image it
# does not hold (self-hosted NativeLink matches it exactly in the scheduler).
DEFAULT_PROPERTIES = ("OSFamily=Linux",)
IMAGE_PROPERTY = "container-image"
# Remote Build Execution's convention for an action that needs the network.
NETWORK_PROPERTY, NETWORK_ON = "dockerNetwork", "standard"
# Inside the image (docker/build.sh makes these): the user actions run as, its home,
# the mount point of the input root.
ACTION_UID = 10001
ACTION_HOME = "/home/worker"
ACTION_ROOT = "/action"
# Must not exceed the server's bot-session-keepalive-timeout: an idle long poll
# lasts 80% of it, a busy worker sends a heartbeat every BUSY_HEARTBEAT_S.
DEFAULT_POLL_TIMEOUT_S = 10.0
BUSY_HEARTBEAT_S = 2.0
# Wait between attempts to reach a server that is down (workers may start first).
RECONNECT_S = 5.0
# Blobs up to this size go through BatchReadBlobs/BatchUpdateBlobs (BuildGrid's
# request limit is 4 MiB); larger ones through ByteStream in chunks.
BATCH_LIMIT_BYTES = 2 * 1024 * 1024
BYTESTREAM_CHUNK_BYTES = 1024 * 1024
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Grace period between SIGTERM and SIGKILL for a command that ran past its timeout.
KILL_GRACE_S = 5.0


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def digest_key(digest: re_pb2.Digest) -> tuple[str, int]:
    return (digest.hash, digest.size_bytes)


class Cas:
    """Reads and writes blobs of one instance: batch calls for small blobs, ByteStream for large ones."""

    def __init__(self, channel: grpc.Channel, instance: str) -> None:
        self._instance = instance
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

    def read(self, digests: Iterable[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        """Returns every blob's content by (hash, size); raises if one is missing."""
        unique = {digest_key(d): d for d in digests}
        blobs: dict[tuple[str, int], bytes] = {}
        batch: list[re_pb2.Digest] = []
        batch_bytes = 0
        for key, digest in unique.items():
            if digest.size_bytes == 0:
                blobs[key] = b""
            elif digest.size_bytes > BATCH_LIMIT_BYTES:
                blobs[key] = self._read_stream(digest)
            else:
                if batch and batch_bytes + digest.size_bytes > BATCH_LIMIT_BYTES:
                    blobs.update(self._read_batch(batch))
                    batch, batch_bytes = [], 0
                batch.append(digest)
                batch_bytes += digest.size_bytes
        if batch:
            blobs.update(self._read_batch(batch))
        return blobs

    def read_message(self, digest: re_pb2.Digest, message_type: type) -> object:
        message = message_type()
        message.ParseFromString(self.read([digest])[digest_key(digest)])
        return message

    def _read_batch(self, digests: list[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        request = re_pb2.BatchReadBlobsRequest(instance_name=self._instance, digests=digests)
        response = self._cas.BatchReadBlobs(request)
        blobs = {}
        for entry in response.responses:
            if entry.status.code != code_pb2.OK:
                raise RuntimeError(f"CAS read of {entry.digest.hash}/{entry.digest.size_bytes}: {entry.status.message or entry.status.code}")
            blobs[digest_key(entry.digest)] = entry.data
        return blobs

    def _read_stream(self, digest: re_pb2.Digest) -> bytes:
        prefix = f"{self._instance}/" if self._instance else ""
        request = bytestream_pb2.ReadRequest(resource_name=f"{prefix}blobs/{digest.hash}/{digest.size_bytes}")
        return b"".join(chunk.data for chunk in self._bytestream.Read(request))

    def upload(self, blobs: dict[tuple[str, int], bytes]) -> None:
        """Uploads the blobs the server does not have yet."""
        digests = [re_pb2.Digest(hash=h, size_bytes=s) for h, s in blobs]
        missing = self._cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(instance_name=self._instance, blob_digests=digests)
        ).missing_blob_digests
        batch: list[re_pb2.BatchUpdateBlobsRequest.Request] = []
        batch_bytes = 0
        for digest in missing:
            data = blobs[digest_key(digest)]
            if len(data) > BATCH_LIMIT_BYTES:
                self._write_stream(digest, data)
                continue
            if batch and batch_bytes + len(data) > BATCH_LIMIT_BYTES:
                self._write_batch(batch)
                batch, batch_bytes = [], 0
            batch.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=digest, data=data))
            batch_bytes += len(data)
        if batch:
            self._write_batch(batch)

    def _write_batch(self, requests: list[re_pb2.BatchUpdateBlobsRequest.Request]) -> None:
        response = self._cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(instance_name=self._instance, requests=requests)
        )
        for entry in response.responses:
            if entry.status.code != code_pb2.OK:
                raise RuntimeError(f"CAS write of {entry.digest.hash}: {entry.status.message or entry.status.code}")

    def _write_stream(self, digest: re_pb2.Digest, data: bytes) -> None:
        prefix = f"{self._instance}/" if self._instance else ""
        resource = f"{prefix}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

        def chunks() -> Iterator[bytestream_pb2.WriteRequest]:
            offset = 0
            while True:
                end = min(offset + BYTESTREAM_CHUNK_BYTES, len(data))
                yield bytestream_pb2.WriteRequest(
                    resource_name=resource if offset == 0 else "",
                    write_offset=offset,
                    data=data[offset:end],
                    finish_write=end == len(data),
                )
                offset = end
                if offset >= len(data):
                    return

        self._bytestream.Write(chunks())


# --- Input tree -------------------------------------------------------------------


def fetch_directories(cas: Cas, root: re_pb2.Digest) -> dict[tuple[str, int], re_pb2.Directory]:
    """All Directory messages of the tree under `root`, fetched level by level."""
    directories: dict[tuple[str, int], re_pb2.Directory] = {}
    level = [root]
    while level:
        blobs = cas.read(d for d in level if digest_key(d) not in directories)
        next_level = []
        for key, data in blobs.items():
            directory = re_pb2.Directory()
            directory.ParseFromString(data)
            directories[key] = directory
            next_level.extend(child.digest for child in directory.directories)
        level = [d for d in next_level if digest_key(d) not in directories]
    return directories


def materialise(
    root: re_pb2.Digest,
    directories: dict[tuple[str, int], re_pb2.Directory],
    blobs: dict[tuple[str, int], bytes],
    target: Path,
) -> None:
    """Writes the tree under `root` into `target` (created): files with their
    executable bit, symlinks as symlinks, empty directories too."""
    target.mkdir(parents=True, exist_ok=True)
    directory = directories[digest_key(root)]
    for node in directory.files:
        path = safe_child(target, node.name)
        path.write_bytes(blobs[digest_key(node.digest)])
        path.chmod(0o755 if node.is_executable else 0o644)
    for link in directory.symlinks:
        os.symlink(link.target, safe_child(target, link.name))
    for child in directory.directories:
        materialise(child.digest, directories, blobs, safe_child(target, child.name))


def safe_child(parent: Path, name: str) -> Path:
    if not name or name in (".", "..") or "/" in name:
        raise ValueError(f"invalid path component in the input tree: {name!r}")
    return parent / name


def file_digests(directories: Iterable[re_pb2.Directory]) -> list[re_pb2.Digest]:
    return [node.digest for directory in directories for node in directory.files]


# --- Outputs ----------------------------------------------------------------------


@dataclass
class Outputs:
    """An ActionResult's output fields, plus the blobs they reference."""

    files: list[re_pb2.OutputFile] = field(default_factory=list)
    directories: list[re_pb2.OutputDirectory] = field(default_factory=list)
    blobs: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def add_blob(self, data: bytes) -> re_pb2.Digest:
        digest = digest_of(data)
        self.blobs[digest_key(digest)] = data
        return digest


def is_executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def directory_message(path: Path, outputs: Outputs, tree: list[re_pb2.Directory]) -> re_pb2.Directory:
    """The Directory message of `path` (symlinks followed), adding its children to `tree`."""
    directory = re_pb2.Directory()
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if entry.is_dir():
            child = directory_message(entry, outputs, tree)
            tree.append(child)
            directory.directories.add(name=entry.name, digest=digest_of(child.SerializeToString()))
        elif entry.is_file():
            digest = outputs.add_blob(entry.read_bytes())
            directory.files.add(name=entry.name, digest=digest, is_executable=is_executable(entry))
        else:
            LOG.warning("output %s is neither a file nor a directory (dangling link?); skipped", entry)
    return directory


def collect_outputs(working_dir: Path, command: re_pb2.Command) -> Outputs:
    """Collects the command's declared outputs that exist (missing ones are the client's business)."""
    outputs = Outputs()
    paths = list(command.output_paths) or [*command.output_files, *command.output_directories]
    for relative in paths:
        path = working_dir / relative
        if path.is_file():
            digest = outputs.add_blob(path.read_bytes())
            outputs.files.append(re_pb2.OutputFile(path=relative, digest=digest, is_executable=is_executable(path)))
        elif path.is_dir():
            children: list[re_pb2.Directory] = []
            root = directory_message(path, outputs, children)
            tree = re_pb2.Tree(root=root, children=children)
            tree_digest = outputs.add_blob(tree.SerializeToString())
            outputs.directories.append(re_pb2.OutputDirectory(path=relative, tree_digest=tree_digest))
    return outputs


# --- Running one action ------------------------------------------------------------


def kill_session(session_id: int) -> None:
    """SIGKILLs every process of a session: the command runs in a session of its
    own, and Bazel's test-setup.sh puts the test in yet another process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may contain spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue  # The process ended meanwhile.


@dataclass
class Execution:
    """What running one action produced: the lease's status and ActionResult."""

    status: status_pb2.Status
    result: re_pb2.ActionResult


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Refused(Exception):
    """An action this worker will not run (an image it does not hold, the network it does not give)."""


@dataclass(frozen=True)
class Sandbox:
    """Where actions run: an unpacked image root (None: on the host)."""

    rootfs: Path | None = None
    network: bool = False

    def argv(self, command: re_pb2.Command, input_root: Path, env: dict[str, str]) -> tuple[list[str], Path, dict]:
        """The argv, host working directory and host environment that run `command`."""
        working_dir = input_root / command.working_directory
        if self.rootfs is None:
            return list(command.arguments), working_dir, env
        inner_dir = f"{ACTION_ROOT}/{command.working_directory}".rstrip("/")
        argv = [
            "bwrap", "--die-with-parent",
            "--unshare-user", "--uid", str(ACTION_UID), "--gid", str(ACTION_UID),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *([] if self.network else ["--unshare-net"]),
            "--ro-bind", str(self.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--tmpfs", ACTION_HOME,
            "--bind", str(input_root), ACTION_ROOT, "--chdir", inner_dir,
            "--clearenv",
        ]
        for name, value in env.items():
            argv += ["--setenv", name, value]
        # bwrap itself comes from the worker's PATH; the action sees only its own environment.
        return [*argv, "--", *command.arguments], input_root, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def platform_properties(action: re_pb2.Action, command: re_pb2.Command) -> dict[str, str]:
    """The action's platform (REAPI 2.2 puts it on the Action; older clients on the Command)."""
    platform = action.platform if action.platform.properties else command.platform
    return {prop.name: prop.value for prop in platform.properties}


class Images:
    """The worker images this worker holds: each verified against the digest its name pins, unpacked once."""

    def __init__(self, layouts: dict[str, Path], cache: Path, allow_network: bool = True) -> None:
        self.roots: dict[str, Path] = {}
        self.allow_network = allow_network
        for name, layout in layouts.items():
            digest = image_digest(name)
            image = oci.verify(layout, digest)
            root = cache / digest.replace(":", "-")
            if not root.is_dir():
                LOG.info("unpacking %s from %s into %s", name, layout, root)
            self.roots[name] = oci.unpack(image, root)
            LOG.info("image %s ready at %s", name, root)

    def sandbox(self, properties: dict[str, str]) -> Sandbox:
        """The sandbox for an action's platform properties; Refused if it names an image not held here. An action
        that names none runs in the first image."""
        requested = properties.get(IMAGE_PROPERTY)
        if requested is None:
            rootfs = next(iter(self.roots.values()))
        elif requested in self.roots:
            rootfs = self.roots[requested]
        else:
            raise Refused(
                f"this worker has no image {requested!r}; it has: {', '.join(repr(name) for name in self.roots)} "
                f"(the container-image property must match one byte for byte: rebuild and re-pin the image, "
                f"docker/build.sh --pin, or restart the workers with the pinned one)"
            )
        network = properties.get(NETWORK_PROPERTY) == NETWORK_ON
        if network and not self.allow_network:
            raise Refused(
                f"this worker gives actions no network ({NETWORK_PROPERTY}={NETWORK_ON}): it was started with "
                f"--no-action-network (selfhosted.sh does so in cluster mode unless --allow-action-network)"
            )
        return Sandbox(rootfs=rootfs, network=network)


def image_digest(name: str) -> str:
    """The digest an image name pins (docker://REPOSITORY@sha256:HEX); ValueError otherwise."""
    _, at, digest = name.rpartition("@")
    hex_part = digest.removeprefix("sha256:")
    if not at or not digest.startswith("sha256:") or len(hex_part) != 64 or not all(c in "0123456789abcdef" for c in hex_part):
        raise ValueError(f"{name!r} does not pin a digest: expected docker://REPOSITORY@sha256:<64 hex digits>")
    return digest


def run_command(
    command: re_pb2.Command,
    input_root: Path,
    timeout_s: float | None,
    log_dir: Path,
    started: Callable[[subprocess.Popen], None] = lambda process: None,
    sandbox: Sandbox = Sandbox(),
) -> tuple[int, bool, bytes, bytes]:
    """Runs the command (in `sandbox`) in its own process group (passed to `started`,
    so that it can be cancelled); returns (exit code, timed out, stdout, stderr)."""
    env = {variable.name: variable.value for variable in command.environment_variables}
    argv, cwd, process_env = sandbox.argv(command, input_root, env)
    stdout_path, stderr_path = log_dir / "stdout", log_dir / "stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=process_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        started(process)
        timed_out = False
        try:
            exit_code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGTERM)
            try:
                exit_code = process.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                exit_code = None
            kill_session(process.pid)
            if exit_code is None:
                exit_code = process.wait()
    return exit_code, timed_out, stdout_path.read_bytes(), stderr_path.read_bytes()


def execute(
    cas: Cas,
    action: re_pb2.Action,
    action_dir: Path,
    worker_name: str,
    lease_id: str,
    started: Callable[[subprocess.Popen], None] = lambda process: None,
    images: Images | None = None,
) -> Execution:
    """Fetches, materialises, runs (in the image it names, if `images`) and uploads
    one action; `action_dir` must not exist. Raises Refused for an image not held."""
    metadata = re_pb2.ExecutedActionMetadata(worker=worker_name)
    metadata.worker_start_timestamp.FromDatetime(now_utc())

    metadata.input_fetch_start_timestamp.FromDatetime(now_utc())
    command = cas.read_message(action.command_digest, re_pb2.Command)
    assert isinstance(command, re_pb2.Command)
    properties = platform_properties(action, command)
    sandbox = images.sandbox(properties) if images is not None else Sandbox()
    image = properties.get(IMAGE_PROPERTY, "-") if sandbox.rootfs is not None else "host"
    directories = fetch_directories(cas, action.input_root_digest)
    blobs = cas.read(file_digests(directories.values()))
    input_root = action_dir / "root"
    materialise(action.input_root_digest, directories, blobs, input_root)
    working_dir = input_root / command.working_directory
    for relative in [*command.output_paths, *command.output_files, *command.output_directories]:
        (working_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    metadata.input_fetch_completed_timestamp.FromDatetime(now_utc())

    timeout_s = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") else None
    # tools/remote/check_run.py reads these lines: keep "action-run lease=... argv=..." stable.
    LOG.info("action-run lease=%s argv=%s timeout=%s dir=%s image=%s network=%s", lease_id,
             " ".join(command.arguments[:3]), timeout_s, action_dir, image, sandbox.network)
    metadata.execution_start_timestamp.FromDatetime(now_utc())
    exit_code, timed_out, stdout, stderr = run_command(
        command, input_root, timeout_s or None, action_dir, started, sandbox
    )
    metadata.execution_completed_timestamp.FromDatetime(now_utc())

    metadata.output_upload_start_timestamp.FromDatetime(now_utc())
    outputs = collect_outputs(working_dir, command)
    result = re_pb2.ActionResult(
        exit_code=exit_code,
        output_files=outputs.files,
        output_directories=outputs.directories,
        stdout_digest=outputs.add_blob(stdout),
        stderr_digest=outputs.add_blob(stderr),
    )
    cas.upload(outputs.blobs)
    metadata.output_upload_completed_timestamp.FromDatetime(now_utc())
    metadata.worker_completed_timestamp.FromDatetime(now_utc())
    result.execution_metadata.CopyFrom(metadata)

    if timed_out:
        status = status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=f"action timed out after {timeout_s} s")
    else:
        status = status_pb2.Status(code=code_pb2.OK)
    return Execution(status=status, result=result)


# --- The bot session ---------------------------------------------------------------


@dataclass
class RunningLease:
    """The one lease this worker works on, and what became of it."""

    lease_id: str
    execution: Execution | None = None  # Set by the executing thread when done.
    process: subprocess.Popen | None = None  # The command, once started.
    cancelled: bool = False

    def cancel(self) -> None:
        """Kills the command's session now, or as soon as it starts."""
        self.cancelled = True
        self._kill_if_cancelled()

    def started(self, process: subprocess.Popen) -> None:
        self.process = process
        self._kill_if_cancelled()

    def _kill_if_cancelled(self) -> None:
        if self.cancelled and self.process is not None:
            kill_session(self.process.pid)


class Worker:
    def __init__(self, channel: grpc.Channel, instance: str, name: str, properties: dict[str, str],
                 work_dir: Path, poll_timeout_s: float, keep_dirs: bool, images: Images | None = None) -> None:
        self._bots = bots_pb2_grpc.BotsStub(channel)
        self._cas = Cas(channel, instance)
        self._instance = instance
        self._name = name
        self._properties = properties
        self._work_dir = work_dir
        self._poll_timeout_s = poll_timeout_s
        self._keep_dirs = keep_dirs
        self._images = images
        self._running: RunningLease | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stops the loop and kills the running command (it runs in its own session,
        so it would outlive the worker)."""
        self._stop.set()
        if self._running is not None:
            LOG.warning("stopping: killing the command of lease %s", self._running.lease_id)
            self._running.cancel()

    def _new_session(self) -> bots_pb2.BotSession:
        properties = [worker_pb2.Device.Property(key=k, value=v) for k, v in self._properties.items()]
        for name in self._images.roots if self._images is not None else ():
            properties.append(worker_pb2.Device.Property(key=IMAGE_PROPERTY, value=name))
        device = worker_pb2.Device(handle=self._name, properties=properties)
        worker = worker_pb2.Worker(devices=[device], configs=[worker_pb2.Worker.Config(key="capacity", value="1")])
        session = self._bots.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(
                parent=self._instance,
                bot_session=bots_pb2.BotSession(bot_id=self._name, status=bots_pb2.OK, worker=worker),
            ),
            timeout=self._poll_timeout_s,
        )
        LOG.info("bot session %s created with properties %s", session.name,
                 [f"{p.key}={p.value}" for p in properties])
        return session

    def _connect(self) -> bots_pb2.BotSession | None:
        """A new bot session; waits while the server is unreachable (not started yet,
        restarting). None if stopped meanwhile."""
        while not self._stop.is_set():
            try:
                return self._new_session()
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                LOG.warning("server unreachable (%s); retrying in %.0f s%s", error.details(), RECONNECT_S,
                            handshake_hint(error.details() or ""))
                self._stop.wait(RECONNECT_S)
        return None

    def run(self) -> None:
        session = self._connect()
        while session is not None and not self._stop.is_set():
            session = self._handle_leases(session)
            busy = self._running is not None
            try:
                session = self._bots.UpdateBotSession(
                    bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session),
                    timeout=self._poll_timeout_s,
                )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    # The server forgot this session (restart, or it expired): start a new one.
                    LOG.warning("bot session lost (%s); creating a new one", error.details())
                    session = self._connect()
                    continue
                LOG.warning("UpdateBotSession failed: %s %s; retrying", error.code(), error.details())
                self._stop.wait(BUSY_HEARTBEAT_S)
                continue
            if busy:
                self._stop.wait(BUSY_HEARTBEAT_S)

    def _handle_leases(self, session: bots_pb2.BotSession) -> bots_pb2.BotSession:
        """Starts new leases, reports finished ones, drops cancelled ones."""
        active = {lease.id for lease in session.leases if lease.state in (bots_pb2.PENDING, bots_pb2.ACTIVE)}
        if self._running is not None and self._running.lease_id not in active:
            # Cancelled (the client gave up) or reassigned (this session expired): stop working on it.
            LOG.warning("lease %s is no longer ours (cancelled or reassigned); killing its command", self._running.lease_id)
            self._running.cancel()
            self._running = None
        for lease in session.leases:
            if lease.state == bots_pb2.PENDING:
                lease.state = bots_pb2.ACTIVE  # Accept it; the next update tells the server.
            if lease.state == bots_pb2.CANCELLED:
                LOG.info("lease %s cancelled by the server", lease.id)
                continue
            if lease.state != bots_pb2.ACTIVE:
                continue
            running = self._running
            if running is None:
                self._start(lease)
            elif running.lease_id == lease.id and running.execution is not None:
                lease.state = bots_pb2.COMPLETED
                lease.status.CopyFrom(running.execution.status)
                lease.result.Pack(running.execution.result)
                self._running = None
            elif running.lease_id != lease.id:
                LOG.error("lease %s offered while %s runs (capacity 1); ignoring it", lease.id, running.lease_id)
        return session

    def _start(self, lease: bots_pb2.Lease) -> None:
        action = re_pb2.Action()
        if lease.payload.Is(re_pb2.Action.DESCRIPTOR):
            lease.payload.Unpack(action)
        else:
            digest = re_pb2.Digest()
            lease.payload.Unpack(digest)
            action = self._cas.read_message(digest, re_pb2.Action)  # type: ignore[assignment]
        running = RunningLease(lease_id=lease.id)
        self._running = running
        threading.Thread(target=self._execute, args=(running, action), daemon=True).start()

    def _execute(self, running: RunningLease, action: re_pb2.Action) -> None:
        action_digest = digest_of(action.SerializeToString())
        action_dir = self._work_dir / f"action-{uuid.uuid4().hex[:12]}"
        start = time.monotonic()
        LOG.info("action-start lease=%s action=%s", running.lease_id, action_digest.hash)
        try:
            execution = execute(
                self._cas, action, action_dir, self._name, running.lease_id,
                started=running.started, images=self._images,
            )
            LOG.info(
                "action-end lease=%s action=%s exit_code=%d status=%s seconds=%.1f",
                running.lease_id, action_digest.hash, execution.result.exit_code,
                code_pb2.Code.Name(execution.status.code), time.monotonic() - start,
            )
        except Refused as error:
            LOG.error("action-refused lease=%s action=%s: %s", running.lease_id, action_digest.hash, error)
            execution = Execution(
                status=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=f"worker {self._name}: {error}"),
                result=re_pb2.ActionResult(),
            )
        except Exception as error:  # The worker's own failure: let the server retry elsewhere.
            LOG.exception("action-error lease=%s action=%s", running.lease_id, action_digest.hash)
            execution = Execution(
                status=status_pb2.Status(code=code_pb2.INTERNAL, message=f"worker {self._name}: {error}"),
                result=re_pb2.ActionResult(),
            )
        finally:
            if not self._keep_dirs:
                shutil.rmtree(action_dir, ignore_errors=True)
        running.execution = execution


def parse_properties(values: Iterable[str]) -> dict[str, str]:
    properties = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--property must be KEY=VALUE, not {value!r}")
        properties[key] = val
    return properties


def handshake_hint(details: str) -> str:
    """What to check when a connection fails the way a refused TLS handshake does (gRPC reports those, like a
    server that is down, as UNAVAILABLE)."""
    if "CERTIFICATE_VERIFY_FAILED" in details or "SSL" in details or "handshake" in details.lower():
        return (" (a TLS handshake failed: does --tls-ca hold the CA that signed the server's certificate, and does "
                "the certificate name the address in --server?)")
    if "Socket closed" in details or "Connection reset" in details:
        return (" (if the server uses mutual TLS: it refuses connections without a client certificate it issued and "
                "has not revoked: --tls-cert/--tls-key, and a grpcs:// --server)")
    return ""


def open_channel(server: str, tls_ca: Path | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> grpc.Channel:
    """A channel to `server`: grpc:// is plain; grpcs:// is TLS, verifying the server against `tls_ca` (else the
    system's roots) and presenting `tls_cert`/`tls_key` when given (mutual TLS)."""
    options = [
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        # Reconnect to a restarted server within seconds (gRPC's default backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", int(RECONNECT_S * 1000)),
    ]
    if server.startswith("grpcs://"):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls_ca.read_bytes() if tls_ca else None,
            private_key=tls_key.read_bytes() if tls_key else None,
            certificate_chain=tls_cert.read_bytes() if tls_cert else None,
        )
        return grpc.secure_channel(server.removeprefix("grpcs://"), credentials, options)
    return grpc.insecure_channel(server.removeprefix("grpc://"), options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=DEFAULT_SERVER, help="the Bots/CAS endpoint (grpc:// or grpcs://)")
    parser.add_argument("--instance", default=DEFAULT_INSTANCE, help="the REAPI instance name")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="this bot's id")
    parser.add_argument("--work-dir", type=Path, required=True, help="actions run in fresh directories under it")
    parser.add_argument("--property", action="append", default=list(DEFAULT_PROPERTIES),
                        help="a platform property KEY=VALUE this worker offers (repeatable)")
    parser.add_argument("--poll-timeout", type=float, default=DEFAULT_POLL_TIMEOUT_S,
                        help="seconds per UpdateBotSession; at most the server's bot keepalive")
    parser.add_argument("--keep-dirs", action="store_true", help="keep each action's directory (debugging)")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=LAYOUT",
                        help="an image to run actions in: its exact container-image string "
                             "(docker://REPOSITORY@sha256:HEX) = the OCI layout that holds it (repeatable; "
                             "the first serves actions that name none); without it, actions run on the host")
    parser.add_argument("--image-cache", type=Path, default=None,
                        help="where images are unpacked, once each [WORK_DIR/images]")
    parser.add_argument("--prepare-only", action="store_true",
                        help="verify and unpack the --image images, then exit (before starting several workers)")
    parser.add_argument("--no-action-network", action="store_true",
                        help=f"refuse actions that ask for the network ({NETWORK_PROPERTY}={NETWORK_ON})")
    parser.add_argument("--tls-ca", type=Path, default=None,
                        help="grpcs:// only: the CA certificate that signed the server's (PEM) [the system's roots]")
    parser.add_argument("--tls-cert", type=Path, default=None,
                        help="grpcs:// only: this worker's client certificate (PEM), for a server that requires one")
    parser.add_argument("--tls-key", type=Path, default=None, help="grpcs:// only: the key of --tls-cert (PEM)")
    args = parser.parse_args(argv)
    tls_files = [path for path in (args.tls_ca, args.tls_cert, args.tls_key) if path is not None]
    if tls_files and not args.server.startswith("grpcs://"):
        parser.exit(2, f"worker: error: --tls-ca/--tls-cert/--tls-key need a grpcs:// --server, not {args.server}\n")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.exit(2, "worker: error: --tls-cert and --tls-key go together\n")
    for path in tls_files:
        if not path.is_file():
            parser.exit(2, f"worker: error: no such TLS file: {path}\n")
    layouts = {}
    for value in args.image:
        name, sep, layout = value.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError(f"--image must be NAME=LAYOUT, not {value!r}")
            image_digest(name)
        except ValueError as error:
            parser.exit(2, f"worker: error: {error}\n")
        layouts[name] = Path(layout)

    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s"
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    images = None
    if layouts:
        if shutil.which("bwrap") is None:
            LOG.error("bubblewrap (bwrap) is not installed: apt-get install bubblewrap, or run without --image")
            return 2
        try:
            images = Images(layouts, (args.image_cache or args.work_dir / "images").resolve(),
                            allow_network=not args.no_action_network)
        except (oci.ImageError, OSError) as error:
            LOG.error("cannot serve the image: %s", error)
            return 2
    else:
        LOG.warning("no --image: actions run on this host, with its programs and files")
    if args.prepare_only:
        return 0
    worker = Worker(
        open_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key), args.instance, args.name,
        parse_properties(args.property),
        args.work_dir.resolve(), args.poll_timeout, args.keep_dirs, images,
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    except grpc.RpcError as error:
        LOG.error("cannot talk to %s (instance %r): %s %s", args.server, args.instance, error.code(), error.details())
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
