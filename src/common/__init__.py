"""Code the jobs share."""

import logging
import os

# On CPUs with AVX512-BF16, importing bitsandbytes warns that its optional 4-bit kernel from the Hugging Face hub
# (the `kernels` package, not in the lock) is unavailable, then uses its own kernel: not the user's business, so
# errors only. Set when the package is first imported, before any entry point imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# torch's C++ side logs every failed connection attempt of a distributed job (with C++ stack frames) on stderr,
# read once when torch is imported; the same failures reach Python as exceptions, which the entry points report in
# one line (src/common/distributed.py). TORCH_CPP_LOG_LEVEL=INFO (or WARNING) brings them back for debugging.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
