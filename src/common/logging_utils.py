"""One logging setup for every job in the repo."""

import logging

import datasets
import transformers

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"

# Libraries that log per request or per file at INFO; we only want their warnings.
NOISY_LOGGERS = ("filelock", "fsspec", "httpcore", "httpx", "huggingface_hub", "urllib3")


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger once and route library logs through it.

    transformers and huggingface_hub install their own stderr handlers; we remove them and let their records
    propagate to the root logger so every line has the same format. Library chatter is kept at WARNING.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    logging.getLogger("huggingface_hub").handlers.clear()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.set_verbosity_warning()
    datasets.utils.logging.enable_propagation()
    # Progress bars for one-off preprocessing (tokenizing a few thousand rows) are noise; the training
    # progress bar belongs to the Trainer and is controlled by --disable_tqdm.
    datasets.disable_progress_bars()
