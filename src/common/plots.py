"""Training curves as a PNG, drawn with matplotlib's Agg backend (no display, no pyplot global state)."""

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _quiet_matplotlib_config_dir() -> None:
    """Where the home directory is read-only (a Bazel sandbox, a remote worker), matplotlib warns at import, on every
    rank, and falls back to a temporary folder; pick that folder first, silently. MPLCONFIGDIR, if set, wins."""
    if "MPLCONFIGDIR" in os.environ:
        return
    default = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
    try:
        default.mkdir(parents=True, exist_ok=True)
        writable = os.access(default, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")


_quiet_matplotlib_config_dir()

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402 (after the config folder is chosen)
from matplotlib.figure import Figure  # noqa: E402

from src.common.paths import atomic_write_bytes

Points = Sequence[tuple[float, float]]  # (optimizer step, value)


def plot_training_curves(
    path: str | os.PathLike,
    train_loss: Points,
    eval_metric: Points,
    title: str,
    eval_label: str = "validation accuracy",
) -> Path:
    """Training loss (top) and an evaluation metric (bottom) against optimizer steps, written atomically to `path`."""
    figure = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, eval_axes = figure.subplots(2, 1, sharex=True)
    figure.suptitle(title)

    loss_axes.plot(*_unzip(train_loss), marker=".", color="tab:blue")
    loss_axes.set_ylabel("training loss")
    eval_axes.plot(*_unzip(eval_metric), marker="o", color="tab:orange")
    eval_axes.set_ylabel(eval_label)
    eval_axes.set_xlabel("optimizer step")
    for axes, points in ((loss_axes, train_loss), (eval_axes, eval_metric)):
        axes.grid(alpha=0.3)
        if not points:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color="gray")

    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    return atomic_write_bytes(path, png.getvalue())


def _unzip(points: Points) -> tuple[list[float], list[float]]:
    return [x for x, _ in points], [y for _, y in points]
