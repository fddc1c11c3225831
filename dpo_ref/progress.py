"""Progress of a command that iterates over a few slow items (proofs, experiment runs): a tqdm bar on a
terminal, one plain line per item on stderr otherwise (logs, CI). No torch import: `dpo-ref prove` uses it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], command: str, label: Callable[[T], str] = str) -> Iterator[T]:
    """Iterate `items`, showing progress on stderr: a tqdm bar (`command` its description) on a terminal,
    else `command: i/n, label(item)` before each item."""
    items = list(items)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=command, leave=False)
        return
    for i, item in enumerate(items, start=1):
        print(f"{command}: {i}/{len(items)}, {label(item)}", file=sys.stderr, flush=True)
        yield item
