"""Command-line plumbing shared by every entry point of the project."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def progress_bar(total: int, desc: str, unit: str, quiet: bool = False) -> Any:
    """A tqdm bar on stderr for long work, shown only to a person at a terminal: hidden when
    stdout or stderr is not a terminal (logs, pipes, tests) or when `quiet` (e.g. --json);
    erased when done."""
    from tqdm import tqdm

    shown = not quiet and sys.stdout.isatty() and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not shown, leave=False,
                file=sys.stderr, dynamic_ncols=True)
