"""Code the jobs share."""

import logging

# On CPUs with AVX512-BF16, importing bitsandbytes warns that its optional 4-bit kernel from the Hugging Face hub
# (the `kernels` package, not in the lock) is unavailable, then uses its own kernel: not the user's business, so
# errors only. Set when the package is first imported, before any entry point imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
