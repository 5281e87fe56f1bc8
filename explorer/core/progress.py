"""A tqdm progress callback for the CLI: ``progress(done, total, label)``."""
from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm


class CliProgress:
    """Progress bar on stderr; silent when stderr is not a TTY or when ``quiet``.

    Call it as ``progress(done, total, label)``; a new label starts a new bar.
    """

    def __init__(self, quiet: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: tqdm | None = None
        self._label = ""

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        if self._bar is None or label != self._label or total != self._bar.total:
            self.close()
            self._bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False)
            self._label = label
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


ProgressFn = Callable[[int, int, str], None]
