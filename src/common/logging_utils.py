"""One logging setup for every job in the repo: a concise console, a full log file per run, one progress bar per
phase.

Console (stderr): this repo's own records from the chosen level up (the jobs' --log_level, default info), the
libraries' only from WARNING up; records marked file-only (`extra={FILE_ONLY: True}`) never. Log lines go through
tqdm.write, so they print above an active progress bar instead of through it. Library progress bars (loading and
saving weights, datasets maps, downloads) are off: a job shows its own, one per phase (progress_bar).

Log file (RunLog, <output_dir>/train.log of a job): every record at INFO (DEBUG with --log_level debug), the
libraries' included.
"""

import contextlib
import io
import logging
import logging.handlers
import os
import re
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType

import datasets
import transformers
from tqdm.auto import tqdm

from src.common import ranks

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
OWN_FORMAT = "%(asctime)s %(message)s"  # the console's format for this repo's records below WARNING
FILE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

OWN_LOGGERS = ("src", "__main__")  # this repo's loggers (a module run with `python -m` logs as __main__)
LIBRARY_CONSOLE_LEVEL = logging.WARNING  # library records below this stay off the console (the log file has them)
FILE_ONLY = "file_only"  # logging `extra` key: True keeps a record off the console (it still reaches the log file)

# Libraries that log per request or per file at INFO; we only want their warnings, in the log file too.
NOISY_LOGGERS = ("filelock", "fsspec", "httpcore", "httpx", "huggingface_hub", "urllib3")
# Python warnings that address developers (a library about another library's API): log file only.
DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

# transformers 5 logs a model's weights that were missing, unexpected or mismatched in the checkpoint as one
# WARNING table, "<Class> LOAD REPORT from: <source>" (transformers/utils/loading_report.py).
LOAD_REPORT_LOGGER = "transformers.modeling_utils"
LOAD_REPORT_MARK = "LOAD REPORT"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PROGRESS_LINE = re.compile(r"\d+%\|")  # a tqdm bar's "42%|" (stray_progress_bars_hidden drops those)


def level_number(level: str | int) -> int:
    """A logging level as its number: "info", "INFO" or logging.INFO -> 20."""
    number = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown logging level {level!r}")
    return number


def file_level(console_level: str | int) -> int:
    """The level of the log file: INFO, or the console's where that is lower (debug)."""
    return min(level_number(console_level), logging.INFO)


def is_own(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] in OWN_LOGGERS


class ConsoleFilter(logging.Filter):
    """Lets this repo's records through from `level` up and the libraries' from WARNING (or `level`, if higher) up;
    file-only records never."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FILE_ONLY, False):
            return False
        threshold = self.level if is_own(record) else max(self.level, LIBRARY_CONSOLE_LEVEL)
        return record.levelno >= threshold


class ConsoleFormatter(logging.Formatter):
    """`12:01:02 message` for this repo's progress and results; level and logger name for warnings and for the
    libraries' records."""

    def __init__(self):
        super().__init__(LOG_FORMAT, DATE_FORMAT)
        self.own = logging.Formatter(OWN_FORMAT, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if is_own(record) and record.levelno < logging.WARNING:
            return self.own.format(record)
        return super().format(record)


class PlainFormatter(logging.Formatter):
    """The log file's format: the full date, and no terminal colour codes (transformers styles its LOAD REPORT)."""

    def __init__(self):
        super().__init__(LOG_FORMAT, FILE_DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler that writes through tqdm.write: a line logged while a progress bar is shown goes above it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must not raise: handleError reports it, as StreamHandler.emit does
            self.handleError(record)


def log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning that makes a Python warning a log record of `py.warnings` (console and log file);
    deprecation notices go to the log file only."""
    logging.getLogger("py.warnings").warning(
        "%s: %s (%s:%d)", category.__name__, message, filename, lineno,
        extra={FILE_ONLY: issubclass(category, DEVELOPER_WARNINGS)},
    )  # fmt: skip


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger (again, if called again) and route library logs and Python warnings through it.

    level: the console level of this repo's own records. transformers, huggingface_hub and datasets install their
    own stderr handlers; we remove them and let their records propagate to the root logger, at INFO (for a RunLog
    file; the console shows them from WARNING up). Library progress bars are turned off.
    """
    console = ConsoleHandler(sys.stderr)
    console.addFilter(ConsoleFilter(level_number(level)))
    console.setFormatter(ConsoleFormatter())
    records = file_level(level)
    logging.basicConfig(level=records, handlers=[console], force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    for name in ("huggingface_hub", "datasets"):  # their own stderr handlers (datasets has no switch for its)
        logging.getLogger(name).handlers.clear()
    transformers.utils.logging.set_verbosity(records)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.set_verbosity(records)
    datasets.utils.logging.enable_propagation()
    warnings.showwarning = log_warning
    # Loading weights, writing shards, tokenizing a few thousand rows, downloads: the job's phases have bars of
    # their own (progress_bar, training_logs.report_progress; --disable_tqdm). This also turns off huggingface_hub's.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


@contextlib.contextmanager
def stray_progress_bars_hidden() -> Iterator[None]:
    """Keep what libraries write straight to sys.stderr meanwhile off the console: progress bars made with tqdm.auto,
    which no library switch turns off (transformers' GGUF de-quantizing bar). Whatever else was written there goes to
    the log file (file-only records), so nothing a library printed is lost. Log records still reach the console
    (whose handler holds the real stream) and Python warnings are log records (setup_logging)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        for line in re.split(r"[\r\n]+", captured.getvalue()):
            if line.strip() and not _PROGRESS_LINE.search(line):
                logging.getLogger(__name__).info("stderr: %s", line, extra={FILE_ONLY: True})


def progress_bar(phase: str | None, total: int, unit: str, show_rate: bool = True, initial: int = 0) -> tqdm:
    """One job phase's progress bar on stderr: `phase: 40%|████    | 64/160 examples [00:03<00:04, 21.30 examples/s]`.

    phase: the bar's name; None gives a bar that shows nothing (--disable_tqdm). unit: what `total` counts (plural).
    show_rate: False leaves the rate to the postfix (set_postfix_str), e.g. examples/s on a bar that counts steps.
    initial: where the bar starts (a resumed run's steps so far); the rate and ETA count from there.
    """
    rate = ", {rate_noinv_fmt}" if show_rate else ""
    return tqdm(
        total=total,
        initial=initial,
        desc=phase,
        unit=f" {unit}",
        disable=phase is None,
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}" + rate
        + "{postfix}]",
    )  # fmt: skip


class RunLog:
    """The log file of one job run: every record, ours and the libraries', at `level` (file_level: INFO, or DEBUG).

    Records are held in memory until open(), which the job calls once its inputs proved valid (data read, model
    loaded): a run that fails on bad input leaves its output folder untouched. A run appends to an existing file,
    after a separator line with its start time and command, so earlier runs' logs are kept. As a context manager it
    closes the file at the end, after recording an exception that ended an opened run (traceback included).
    """

    def __init__(self, path: str | os.PathLike, command: str, level: int = logging.INFO):
        self.path = Path(path)
        self.header = f"===== {datetime.now():{FILE_DATE_FORMAT}} pid {os.getpid()}: {command} ====="
        self.level = level
        self.file: logging.FileHandler | None = None
        # Without a target a MemoryHandler keeps every record (flush() is a no-op) until setTarget.
        self.buffer = logging.handlers.MemoryHandler(capacity=1, target=None, flushOnClose=False)
        self.buffer.setLevel(level)
        logging.getLogger().addHandler(self.buffer)

    def open(self) -> Path:
        """Start writing the file: the held records first, then every record as it is logged."""
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
            self.file.setLevel(self.level)
            self.file.setFormatter(PlainFormatter())
            self.file.stream.write(("\n" if self.path.stat().st_size else "") + self.header + "\n")
            root = logging.getLogger()
            self.buffer.setTarget(self.file)
            self.buffer.flush()
            root.removeHandler(self.buffer)
            root.addHandler(self.file)
        return self.path

    def close(self) -> None:
        logging.getLogger().removeHandler(self.buffer)
        self.buffer.close()
        if self.file is not None:
            logging.getLogger().removeHandler(self.file)
            self.file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if exc is not None and self.file is not None:
            logging.getLogger(__name__).error(
                "run ended by %s", type(exc).__name__, exc_info=(exc_type, exc, tb), extra={FILE_ONLY: True}
            )
        self.close()


def main_process_run_log(path: str | os.PathLike, command: str, console_level: int
                         ) -> "RunLog | contextlib.nullcontext[None]":
    """The job's RunLog (at file_level(console_level)) in rank 0 or a single process; in the other ranks of a
    distributed job nothing (their warnings reach the console): rank 0 alone writes train.log."""
    if not ranks.is_main_process():
        return contextlib.nullcontext()
    return RunLog(path, command, file_level(console_level))


class _HoldLoadReports(logging.Filter):
    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if LOAD_REPORT_MARK in record.getMessage():
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def held_load_reports() -> Iterator[list[logging.LogRecord]]:
    """Hold back the LOAD REPORT warnings that transformers logs while a model loads, for the caller to judge once
    it has loaded (load_report_rows) and then pass on (pass_on). Should the load fail, they are passed on at once."""
    hold = _HoldLoadReports()
    emitter = logging.getLogger(LOAD_REPORT_LOGGER)
    emitter.addFilter(hold)
    try:
        yield hold.held
    except BaseException:
        emitter.removeFilter(hold)
        for record in hold.held:
            pass_on(record)
        raise
    emitter.removeFilter(hold)


def load_report_rows(record: logging.LogRecord) -> list[tuple[str, str]]:
    """The (key, status) rows of a LOAD REPORT table, e.g. [("classifier.weight", "MISSING")]; [] if none."""
    lines = _ANSI.sub("", record.getMessage()).splitlines()
    separator = next((i for i, line in enumerate(lines) if "+" in line and set(line) <= {"-", "+"}), None)
    if separator is None:
        return []
    rows = []
    for line in lines[separator + 1 :]:
        if not line.strip():
            break
        cells = [cell.strip() for cell in line.split(" | ")]
        rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
    return rows


def pass_on(record: logging.LogRecord, file_only: bool = False) -> None:
    """Log a held record after all; file_only: as an INFO record of the log file (it was explained otherwise)."""
    if file_only:
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        setattr(record, FILE_ONLY, True)
    logging.getLogger(record.name).handle(record)
