"""OCI image layouts with the standard library only: write one reproducibly from a root directory, verify one
against its digest, unpack one.

docker/build.sh writes the worker image with `write`; tools/remote/worker.py verifies and unpacks the images it
serves; //docker:worker_image_test reads `inputs_digest` to find a stale pin. An OCI layout is a directory:
`oci-layout`, `index.json` and `blobs/sha256/<hex>` (the manifest, the config, gzip'd tar layers); the image's
digest is the sha256 of its manifest's bytes, which name every other blob by its sha256.

Reproducible: the same root directory gives the same bytes whatever the files' times or the order the file system
lists them in. Entries are sorted, every mtime is the build's SOURCE_DATE_EPOCH, owners are numeric only, JSON is
written with sorted keys and no spaces, gzip's header carries no name and mtime 0 (the compressed bytes still
depend on zlib's version: build on the same Debian release to get the same digest).

    python3 tools/remote/oci.py write --root DIR --output LAYOUT --split opt/cpu-finetune/venv --epoch N ...
    python3 tools/remote/oci.py digest LAYOUT
    python3 tools/remote/oci.py verify LAYOUT sha256:HEX
    python3 tools/remote/oci.py label LAYOUT cpu-finetune.inputs
    python3 tools/remote/oci.py inputs REPO
    python3 tools/remote/oci.py pinned REPO [WORKER_IMAGE]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# zlib level 1: 3x faster than the default 6 (about 100 MB/s against 35 MB/s on torch's libraries here) for a
# layer about 15% larger; the venv layer is the bulk of the image.
GZIP_LEVEL = 1
COPY_CHUNK_BYTES = 1024 * 1024
# The files whose content decides the worker image (docker/build.sh's recipe): their digest is pinned next to the
# image's (docker/worker_image.bzl, WORKER_IMAGE_INPUTS), so that a change to any of them shows the pin is stale.
IMAGE_INPUTS = (
    "bazel_requirements_lock.txt",
    "docker/build.sh",
    "docker/debian_packages.lock",
    "tools/remote/oci.py",
)
# Where the image is pinned: WORKER_IMAGE (the exact container-image string), its digest and the inputs digest.
PIN_FILE = "docker/worker_image.bzl"
# Mount points for the runtime (proc, sys, dev): their contents never go into a layer.
RUNTIME_MOUNTS = ("dev", "proc", "sys")


class ImageError(Exception):
    """A layout that is missing, malformed or does not match its digest."""


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(COPY_CHUNK_BYTES), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def inputs_digest(repo: Path, files: Sequence[str] = IMAGE_INPUTS) -> str:
    """One digest over the recipe's files (their paths and contents)."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        content = (repo / relative).read_bytes()
        digest.update(f"{relative}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return "sha256:" + digest.hexdigest()


def read_pin(repo: Path) -> dict[str, str]:
    """The constants of docker/worker_image.bzl (Starlark that is also Python: string assignments)."""
    constants: dict[str, object] = {}
    exec(compile((repo / PIN_FILE).read_text(), str(repo / PIN_FILE), "exec"), {}, constants)
    return {name: value for name, value in constants.items() if isinstance(value, str) and name.isupper()}


# --- Writing -------------------------------------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it on the way to `sink`."""

    def __init__(self, sink: io.BufferedIOBase | io.RawIOBase | gzip.GzipFile) -> None:
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def _walk(root: Path, relative: str = "") -> Iterator[str]:
    """Every path under `root` (relative, parents first, siblings sorted by name); runtime mounts stay empty."""
    directory = root / relative if relative else root
    for name in sorted(os.listdir(directory)):
        path = f"{relative}/{name}" if relative else name
        yield path
        if os.path.isdir(root / path) and not os.path.islink(root / path) and path not in RUNTIME_MOUNTS:
            yield from _walk(root, path)


def _in_layer(path: str, split: str, upper: bool) -> bool:
    """The lower layer holds everything but `split`'s contents; the upper layer exactly those."""
    inside = path.startswith(split + "/")
    return inside if upper else not inside


def write_layer(root: Path, blobs: Path, split: str, upper: bool, epoch: int) -> tuple[dict, str]:
    """Writes one gzip'd tar layer of `root` into `blobs`; returns its descriptor and its diff id (the sha256 of
    the uncompressed tar)."""
    temporary = blobs / f".layer-{uuid.uuid4().hex}"
    hard_links: dict[tuple[int, int], str] = {}
    with temporary.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in _walk(root):
                    if not _in_layer(path, split, upper):
                        continue
                    full = root / path
                    info = os.lstat(full)
                    entry = tarfile.TarInfo(path)
                    entry.mode, entry.uid, entry.gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
                    entry.mtime, entry.uname, entry.gname = epoch, "", ""
                    if stat.S_ISDIR(info.st_mode):
                        entry.type = tarfile.DIRTYPE
                        tar.addfile(entry)
                    elif stat.S_ISLNK(info.st_mode):
                        entry.type, entry.linkname = tarfile.SYMTYPE, os.readlink(full)
                        tar.addfile(entry)
                    elif stat.S_ISREG(info.st_mode):
                        key = (info.st_dev, info.st_ino)
                        if info.st_nlink > 1 and key in hard_links:
                            entry.type, entry.linkname = tarfile.LNKTYPE, hard_links[key]
                            tar.addfile(entry)
                            continue
                        hard_links[key] = path
                        entry.size = info.st_size
                        with full.open("rb") as content:
                            tar.addfile(entry, content)
                    # Devices, sockets and pipes are the runtime's business: not in the image.
    digest = "sha256:" + compressed.hash.hexdigest()
    temporary.rename(blobs / digest.removeprefix("sha256:"))
    descriptor = {"mediaType": MEDIA_LAYER, "digest": digest, "size": compressed.size}
    return descriptor, "sha256:" + uncompressed.hash.hexdigest()


def _write_blob(blobs: Path, data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


@dataclass(frozen=True)
class ImageConfig:
    """What a container runtime needs besides the layers (the OCI config's `config` and labels)."""

    user: str
    env: tuple[str, ...]
    working_dir: str
    labels: dict[str, str]
    history: tuple[str, str]  # what made the lower and the upper layer


def write_layout(root: Path, output: Path, split: str, epoch: int, config: ImageConfig, ref_name: str) -> str:
    """Writes `root` as a two-layer OCI layout into `output` (replaced); returns the manifest digest."""
    partial = output.with_name(f".{output.name}.partial-{uuid.uuid4().hex[:8]}")
    blobs = partial / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids = [], []
    for upper in (False, True):
        descriptor, diff_id = write_layer(root, blobs, split, upper, epoch)
        layers.append(descriptor)
        diff_ids.append(diff_id)
    created = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": config.user,
            "Env": list(config.env),
            "WorkingDir": config.working_dir,
            "Labels": config.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": what} for what in config.history],
    }
    config_descriptor = _write_blob(blobs, canonical_json(image_config), MEDIA_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_descriptor,
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": created, **config.labels},
    }
    manifest_descriptor = _write_blob(blobs, canonical_json(manifest), MEDIA_MANIFEST)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{**manifest_descriptor, "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
    }
    (partial / "index.json").write_bytes(canonical_json(index))
    (partial / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    return manifest_descriptor["digest"]


# --- Reading -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A verified layout: its manifest digest, manifest and config."""

    layout: Path
    digest: str
    manifest: dict
    config: dict

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ImageError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(value, dict):
        raise ImageError(f"{path}: not a JSON object")
    return value


def manifest_digest(layout: Path) -> str:
    """The digest of the layout's one image manifest, as index.json names it."""
    index = _read_json(layout / "index.json")
    manifests = index.get("manifests") or []
    if len(manifests) != 1 or manifests[0].get("mediaType") != MEDIA_MANIFEST:
        raise ImageError(f"{layout}/index.json: expected exactly one image manifest, found {len(manifests)}")
    return str(manifests[0].get("digest", ""))


def verify(layout: Path, expected: str | None = None) -> Image:
    """Checks every blob of the layout's image against its digest (and the manifest against `expected`)."""
    if not (layout / "oci-layout").is_file():
        raise ImageError(f"{layout}: not an OCI image layout (no oci-layout file)")
    digest = manifest_digest(layout)
    if expected is not None and digest != expected:
        raise ImageError(f"{layout} holds image {digest}, not {expected}")

    def checked(descriptor: dict, what: str) -> Path:
        path = layout / "blobs" / "sha256" / str(descriptor.get("digest", "")).removeprefix("sha256:")
        if not path.is_file():
            raise ImageError(f"{layout}: the {what} blob {descriptor.get('digest')} is missing")
        if path.stat().st_size != descriptor.get("size") or sha256_file(path) != descriptor.get("digest"):
            raise ImageError(f"{layout}: the {what} blob {descriptor.get('digest')} does not match its digest")
        return path

    manifest_path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    if not manifest_path.is_file() or sha256_file(manifest_path) != digest:
        raise ImageError(f"{layout}: the manifest blob {digest} is missing or does not match its digest")
    manifest = _read_json(manifest_path)
    config = _read_json(checked(manifest.get("config", {}), "config"))
    for number, layer in enumerate(manifest.get("layers", [])):
        if layer.get("mediaType") != MEDIA_LAYER:
            raise ImageError(f"{layout}: layer {number} is {layer.get('mediaType')}, not {MEDIA_LAYER}")
        checked(layer, f"layer {number}")
    return Image(layout=layout, digest=digest, manifest=manifest, config=config)


def unpack(image: Image, destination: Path) -> Path:
    """Unpacks a verified image's layers into `destination` unless a complete unpack is there already (the
    directory appears whole, by rename, so a half-unpacked root is never used); returns it."""
    if destination.is_dir():
        return destination
    partial = destination.with_name(f".{destination.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        for layer in image.manifest["layers"]:
            with tarfile.open(image.blob(layer["digest"]), mode="r:gz") as tar:
                for member in tar:
                    if os.path.basename(member.name).startswith(".wh."):
                        raise ImageError(f"{image.layout}: whiteouts are not supported ({member.name})")
                # The blobs matched the pinned digest: the content is the image that was built, absolute symlinks
                # (Debian's /etc/alternatives) included.
                with tarfile.open(image.blob(layer["digest"]), mode="r:gz") as tar:
                    tar.extractall(partial, filter="fully_trusted")
        for mount in RUNTIME_MOUNTS:
            (partial / mount).mkdir(exist_ok=True)
        try:
            partial.rename(destination)
        except OSError:
            if not destination.is_dir():  # Not another process's unpack that finished first.
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a root directory as a two-layer OCI layout")
    write.add_argument("--root", type=Path, required=True)
    write.add_argument("--output", type=Path, required=True)
    write.add_argument("--split", required=True, help="a directory (relative) whose contents form the upper layer")
    write.add_argument("--epoch", type=int, required=True, help="every file's mtime (SOURCE_DATE_EPOCH)")
    write.add_argument("--user", required=True)
    write.add_argument("--env", action="append", default=[])
    write.add_argument("--working-dir", required=True)
    write.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    write.add_argument("--history", nargs=2, required=True, metavar=("LOWER", "UPPER"))
    write.add_argument("--ref-name", default="latest")
    digest = commands.add_parser("digest", help="print a layout's manifest digest")
    digest.add_argument("layout", type=Path)
    check = commands.add_parser("verify", help="check every blob of a layout (and its digest)")
    check.add_argument("layout", type=Path)
    check.add_argument("expected", nargs="?")
    label = commands.add_parser("label", help="print a label of a layout's (verified) image, empty if it has none")
    label.add_argument("layout", type=Path)
    label.add_argument("key")
    inputs = commands.add_parser("inputs", help="print the digest of the image recipe's files (IMAGE_INPUTS)")
    inputs.add_argument("repo", type=Path)
    pinned = commands.add_parser("pinned", help=f"print a constant of {PIN_FILE} (default WORKER_IMAGE)")
    pinned.add_argument("repo", type=Path)
    pinned.add_argument("name", nargs="?", default="WORKER_IMAGE")
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            labels = dict(label.split("=", 1) for label in args.label)
            config = ImageConfig(args.user, tuple(args.env), args.working_dir, labels, tuple(args.history))
            print(write_layout(args.root, args.output, args.split.strip("/"), args.epoch, config, args.ref_name))
        elif args.command == "digest":
            print(manifest_digest(args.layout))
        elif args.command == "label":
            print(verify(args.layout).config.get("config", {}).get("Labels", {}).get(args.key, ""))
        elif args.command == "inputs":
            print(inputs_digest(args.repo))
        elif args.command == "pinned":
            print(read_pin(args.repo)[args.name])
        else:
            print(verify(args.layout, args.expected).digest)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
