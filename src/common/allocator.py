"""The memory allocator: entry points restart themselves once with tcmalloc preloaded where it is installed.

No torch here, nor anything heavy: an entry point calls restart_with_fast_allocator() before its other imports, so
the process that is replaced has imported next to nothing (the imports of torch, transformers and peft take seconds,
and would otherwise be paid twice).
"""

import os
import sys
from pathlib import Path

from src.common.errors import EXIT_USAGE, UserError

# glibc's malloc hands large freed blocks back to the OS and page-faults them in again on the next step (~1 GiB of
# page faults per LoRA step of 4 x 256 tokens here, 10% of the CPU time in the kernel); tcmalloc keeps them: 1.1x
# faster bf16 LoRA steps and a lower peak RSS (bench_causal_lm). PyTorch's own CPU launcher
# (torch.backends.xeon.run_cpu) preloads it the same way. Debian/Ubuntu package: libtcmalloc-minimal4.
TCMALLOC_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
)
ALLOCATOR_ENV = "CPU_FINETUNE_ALLOCATOR"  # "system" keeps glibc's malloc
_PRELOADED_ENV = "CPU_FINETUNE_ALLOCATOR_PRELOADED"  # set on the restarted process: never restart twice


def allocator_in_use(maps_path: Path = Path("/proc/self/maps")) -> str:
    """"tcmalloc" if this process has it loaded, else "system"."""
    try:
        return "tcmalloc" if "libtcmalloc" in maps_path.read_text() else "system"
    except OSError:
        return "system"


def allocator_preload(env: dict[str, str], exists=os.path.exists) -> str | None:
    """The LD_PRELOAD value that adds tcmalloc for a process with this environment, or None: not installed, already
    preloaded, opted out with CPU_FINETUNE_ALLOCATOR=system, or this process is the restarted one."""
    choice = env.get(ALLOCATOR_ENV, "tcmalloc")
    if choice not in ("tcmalloc", "system"):
        raise UserError(f"{ALLOCATOR_ENV}={choice!r}: use tcmalloc (the default where installed) or system")
    current = env.get("LD_PRELOAD", "")
    if choice == "system" or _PRELOADED_ENV in env or "libtcmalloc" in current:
        return None
    library = next((path for path in TCMALLOC_LIBRARIES if exists(path)), None)
    if library is None:
        return None
    return f"{library} {current}".strip()


def restart_with_fast_allocator() -> None:
    """Restart this program (same interpreter, arguments and environment) with tcmalloc preloaded, if allocator_preload
    says so: LD_PRELOAD only takes effect when a process starts. Call it in `if __name__ == "__main__":` at the top of
    an entry point, before its heavy imports, never from a function tests call in-process."""
    if allocator_in_use() == "tcmalloc":
        return
    try:
        preload = allocator_preload(dict(os.environ))
    except UserError as e:  # before run_cli is in place: report it the same way
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if preload is None:
        return
    env = dict(os.environ, LD_PRELOAD=preload, **{_PRELOADED_ENV: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
