"""Where jobs write their outputs, and how they write them without ever leaving a half-written file."""

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.common.errors import UserError

# Set by the test wrappers to Bazel's $TEST_UNDECLARED_OUTPUTS_DIR; wins over everything else.
OUTPUT_DIR_ENV = "CPU_FINETUNE_OUTPUT_DIR"
# Set by `bazel test`: files written here are kept as test outputs (outputs.zip).
BAZEL_TEST_OUTPUTS_ENV = "TEST_UNDECLARED_OUTPUTS_DIR"
# Set by `bazel run` to the directory the user ran bazel from (the process itself runs in runfiles).
BAZEL_WORKING_DIR_ENV = "BUILD_WORKING_DIRECTORY"


def default_output_dir(job_name: str) -> Path:
    """The output directory of a job when the user did not pass one.

    In order: $CPU_FINETUNE_OUTPUT_DIR, $TEST_UNDECLARED_OUTPUTS_DIR, $BUILD_WORKING_DIRECTORY/outputs/<job>
    (the user's cwd under `bazel run`), ./outputs/<job>.
    """
    for env in (OUTPUT_DIR_ENV, BAZEL_TEST_OUTPUTS_ENV):
        if os.environ.get(env):
            return Path(os.environ[env])
    base = os.environ.get(BAZEL_WORKING_DIR_ENV) or os.getcwd()
    return Path(base) / "outputs" / job_name


def resolve_user_path(path: str | os.PathLike) -> Path:
    """A path the user typed, made absolute against the directory they typed it in.

    Under `bazel run` the process runs inside the runfiles tree, so a relative path is taken relative to
    $BUILD_WORKING_DIRECTORY; otherwise relative to the current directory. `~` is expanded.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return Path(os.environ.get(BAZEL_WORKING_DIR_ENV) or os.getcwd()) / path


def read_user_text(path: Path, what: str = "data file") -> str:
    """The text of a file the user gave, as UTF-8; UserError (one line) if it cannot be read or is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def looks_like_local_path(spec: str) -> bool:
    """True if a source string names a local path rather than a Hub id: it starts with /, . or ~, or exists."""
    return spec.startswith(("/", ".", "~")) or resolve_user_path(spec).exists()


def _sibling_temp(path: Path, tag: str) -> Path:
    """A unique hidden name next to `path`, so a rename onto `path` stays on one filesystem."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file and a rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_temp(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as JSON to `path` via a temp file and a rename: readers see the old file or the new one."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a sibling temp dir and move it to `path` only if the block succeeds.

    An existing `path` is replaced only after the new content is complete; if the block raises, the temp
    dir is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling_temp(target, "tmp")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if not target.exists():
        os.rename(staging, target)
        return
    # A directory cannot be renamed over a non-empty one: move the old one aside, move the new one in,
    # then delete the old one. If the second rename fails, put the old one back.
    backup = _sibling_temp(target, "old")
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
