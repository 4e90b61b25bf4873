"""User-facing errors and the CLI wrapper that turns them into one line and an exit code."""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from src.common import ranks

EXIT_USAGE = 2  # bad flag, bad config value, missing file: something the user can fix
EXIT_LOST_CONTACT = 4  # a process of a distributed job lost the others (one died, or the network failed)
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
        if ranks.report_rank_error(message):  # in a distributed job, rank 0 prints it (the launcher others')
            print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        lost = ranks.lost_contact(e)
        if lost is None:
            raise
        print(f"error: {lost}", file=sys.stderr)
        return EXIT_LOST_CONTACT
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return EXIT_INTERRUPTED
