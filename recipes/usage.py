"""Bad input on the command lines (`recipes.tempo`, `recipes.sweep`, `recipes.report`, `recipes.plot`): one line,
exit code 2, before anything is written. Kept free of heavy imports, so a command that needs no torch loads none."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2, before anything is created."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a `UsageError` (one line, in the commands' format) instead of its usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)
