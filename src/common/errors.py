"""User-facing errors and the CLI wrapper that turns them into one line and an exit code."""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

EXIT_USAGE = 2  # bad flag, bad config value, missing file: something the user can fix
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

logger = logging.getLogger(__name__)


class UserError(Exception):
    """Bad input the user can fix. The message is one line that says what to do."""


class CliArgumentParser(argparse.ArgumentParser):
    """An argparse parser that reports a bad flag as a UserError (one line, exit 2) instead of a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a CLI `main(argv) -> exit code`, reporting a UserError as `error: <message>` on stderr.

    Use as `sys.exit(run_cli(main))`. Anything other than a UserError is a bug and keeps its traceback.
    """
    try:
        return main(argv)
    except UserError as e:
        message = " ".join(str(e).split())  # guarantee a single line
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return EXIT_INTERRUPTED
