"""Where this process is in a distributed job (torchrun's environment), and its errors as one line.

No imports beyond the standard library: src.common.errors uses it, and src.common.distributed builds on it.
"""

import json
import os
import time


def in_rank() -> bool:
    """True in a process torchrun started (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Rank 0 (or no distributed run): the only process that writes outputs and prints the summary."""
    return rank() == 0


def restart_count() -> int:
    """How often torchrun restarted this group (TORCHELASTIC_RESTART_COUNT); 0 in the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def report_rank_error(message: str) -> bool:
    """Record a rank's one-line error for the launcher (torchrun's error file); True if this rank should also print
    it (rank 0, or not distributed): the other ranks hit the same bad input, and one line is enough."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if in_rank() and path:
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"message": message, "timestamp": int(time.time())}, f)
        except OSError:
            pass
    return is_main_process()


def lost_contact(error: BaseException) -> str | None:
    """One line for an error that means this rank lost the others (a peer died, the network failed, a collective
    timed out), or None for any other error (a bug: it keeps its traceback). Only in a distributed rank."""
    if not in_rank():
        return None
    name = type(error).__name__
    text = " ".join(str(error).split())
    gloo = any(marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "gloo",
                                            "Timed out", "timed out", "Broken pipe"))
    if name in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError") or (
        isinstance(error, RuntimeError) and gloo
    ):
        return (f"rank {rank()} lost contact with the other processes of the job ({name}: {text[:200]}); another "
                "process probably died (see its error), or the network between the machines failed")
    return None
