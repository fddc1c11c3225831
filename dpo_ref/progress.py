"""Progress on stderr, the one helper of every command: a tqdm bar on a terminal, plain lines otherwise (logs,
CI). No torch import: `dpo-ref prove` uses it.

    progress(items, command)      a few slow items (proofs, experiment runs): `command: i/n, item` per item
    phase(command, name, total)   a phase of many fast steps (the trainer's warm-up and preference loop):
                                  `command: name (n steps)` once when it starts, a bar updated by hand
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether stderr is a terminal (a bar), not a log or a pipe (plain lines)."""
    return sys.stderr.isatty()


def progress(items: Iterable[T], command: str, label: Callable[[T], str] = str) -> Iterator[T]:
    """Iterate `items`, showing progress on stderr: a tqdm bar (`command` its description) on a terminal,
    else `command: i/n, label(item)` before each item."""
    items = list(items)
    if on_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=command, leave=False)
        return
    for i, item in enumerate(items, start=1):
        print(f"{command}: {i}/{len(items)}, {label(item)}", file=sys.stderr, flush=True)
        yield item


def phase(command: str, name: str, total: int, *, initial: int = 0, enabled: bool = True):
    """A bar for a phase of steps `initial` .. `total` (a resumed run starts past 0), driven by its caller
    (`bar.update(1)`, `bar.set_postfix(...)`, `bar.close()`): a tqdm bar on a terminal; elsewhere one line
    `command: name (n steps)` now and a bar that shows nothing. `enabled=False`: nothing at all."""
    tty = enabled and on_terminal()
    if enabled and not tty:
        print(f"{command}: {name} ({total - initial} steps)", file=sys.stderr, flush=True)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, disable=not tty, leave=False)
