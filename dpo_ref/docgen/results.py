"""Numbers the docs quote, read from the results files the commands write (`docs/results/*.json`).

Every measured figure in README.md and docs/*.md sits in a marked span that names where it comes from:

    <!-- r:train.json:summary.seconds:.1f -->23.4<!-- /r -->

is the value at key path `summary.seconds` of `docs/results/train.json`, formatted with `format(value, ".1f")`
(a path step that is an integer indexes a list; `s` formats a string as it is). A whole printed block is

    <!-- r-block:train.json:printed -->
    ```
    ...the lines of the list at `printed`, one per line...
    ```
    <!-- /r-block -->

`python -m dpo_ref.docgen.results refresh` rewrites every span from the files (after `benchmarks/refresh_results.sh`
has re-run the commands); `python -m dpo_ref.docgen.results check` lists the spans that disagree (exit 1), which is
what `tests/meta/test_doc_results.py` asserts for the checked-in docs. Nothing here is measured: the commands
(`dpo-ref train --json`, `dpo-ref experiment ... --json`, `dpo-ref bench --json`,
`benchmarks/verify_budget.py --json`, `benchmarks/logps_memory.py --json`, `benchmarks/suite_time.py --json`)
write the files, each with the machine it ran on (`machine()`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path

from dpo_ref.atomic import OutputLocks, check_output_file, write_output, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]  # the checkout: dpo_ref/docgen/ -> .
RESULTS = ROOT / "docs" / "results"
DOCS = ("README.md", "docs")  # the markdown files that may quote results: README.md and docs/*.md

SPAN = re.compile(r"<!-- r:(?P<file>[\w.-]+):(?P<path>[^:\s]+):(?P<fmt>[^\s]*) -->(?P<text>.*?)<!-- /r -->")
BLOCK = re.compile(
    r"<!-- r-block:(?P<file>[\w.-]+):(?P<path>[^:\s]+) -->\n```(?P<lang>\w*)\n(?P<text>.*?)```\n<!-- /r-block -->",
    re.DOTALL,
)


def machine() -> dict:
    """Where and when a measurement ran: date (UTC), cores, load averages, Python, platform, torch."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def write_results(path: str, obj: dict) -> None:
    """Write a results file atomically, or to standard output for "-" (the `--json PATH` of the commands that
    measure)."""
    write_output(path, json.dumps(obj, indent=2) + "\n")


def check_results_path(path: str, option: str = "--json") -> str:
    """Refuse a results path that cannot be written (a directory, a FIFO, a missing folder) before measuring."""
    return check_output_file(path, option)


def lookup(obj: object, path: str) -> object:
    """The value at a dotted key path (`train_step.ref_model.ratio`, `0.policy.a`). A key may itself hold dots
    (`results.dpo_0.1.margin_end`): the longest key that matches wins; an integer step indexes a list."""
    rest = path
    while rest:
        if isinstance(obj, list):
            step, _, rest = rest.partition(".")
            obj = obj[int(step)]
            continue
        if not isinstance(obj, dict):
            raise KeyError(f"{path!r}: nothing to index at {rest!r}")
        keys = [k for k in obj if rest == k or rest.startswith(k + ".")]
        if not keys:
            raise KeyError(f"no key {rest.split('.')[0]!r} in path {path!r}")
        key = max(keys, key=len)
        obj, rest = obj[key], rest[len(key) + 1 :]
    return obj


def _format(value: object, fmt: str) -> str:
    if fmt in ("", "s"):
        return str(value)
    return format(value, fmt)


class Results:
    """The results files, loaded once each."""

    def __init__(self, directory: Path = RESULTS):
        self.directory = Path(directory)
        self._files: dict[str, object] = {}

    def load(self, name: str) -> object:
        if name not in self._files:
            path = self.directory / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (its command writes it: see dpo_ref/docgen/results.py)")
            self._files[name] = json.loads(path.read_text(encoding="utf-8"))
        return self._files[name]

    def value(self, name: str, path: str, fmt: str) -> str:
        return _format(lookup(self.load(name), path), fmt)

    def block(self, name: str, path: str) -> str:
        lines = lookup(self.load(name), path)
        if isinstance(lines, str):
            lines = lines.splitlines()
        return "".join(f"{line}\n" for line in lines)


def render(text: str, results: Results) -> str:
    """`text` with every span and block rewritten from the results files."""
    text = BLOCK.sub(
        lambda m: (
            f"<!-- r-block:{m['file']}:{m['path']} -->\n```{m['lang']}\n"
            f"{results.block(m['file'], m['path'])}```\n<!-- /r-block -->"
        ),
        text,
    )
    return SPAN.sub(
        lambda m: (
            f"<!-- r:{m['file']}:{m['path']}:{m['fmt']} -->{results.value(m['file'], m['path'], m['fmt'])}<!-- /r -->"
        ),
        text,
    )


def spans(text: str) -> list[tuple[str, str, str, str]]:
    """Every quoted figure as (file, path, format, text as written); a block's format is `block`."""
    out = [(m["file"], m["path"], "block", m["text"]) for m in BLOCK.finditer(text)]
    return out + [(m["file"], m["path"], m["fmt"], m["text"]) for m in SPAN.finditer(text)]


def mismatches(text: str, results: Results) -> list[str]:
    """One line per span whose text differs from its file's value (or whose file or key is missing)."""
    bad = []
    for name, path, fmt, written in spans(text):
        try:
            want = results.block(name, path) if fmt == "block" else results.value(name, path, fmt)
        except (FileNotFoundError, KeyError, IndexError, ValueError, TypeError) as err:
            bad.append(f"{name}:{path}: {err}")
            continue
        if written != want:
            if fmt == "block":
                written, want = f"(block) {written.strip()[:50]}", f"(block) {want.strip()[:50]}"
            bad.append(f"{name}:{path}: the docs say {written!r}, the file gives {want!r}")
    return bad


def doc_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md"]
    return files + sorted((root / "docs").glob("*.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_ref.docgen.results", description="Rewrite or check the docs' quoted numbers (docs/results)."
    )
    parser.add_argument("action", choices=("refresh", "check"), help="rewrite the spans, or list disagreements")
    args = parser.parse_args(argv)
    results = Results()
    status = 0
    for path in doc_files():
        rel = path.relative_to(ROOT)
        if args.action == "refresh":
            with OutputLocks({str(rel): str(path)}):  # read, then rewritten: one refresh at a time
                text = path.read_text(encoding="utf-8")
                new = render(text, results)
                if new != text:
                    write_text_atomic(str(path), new)
                    print(f"rewrote {rel}")
        else:
            text = path.read_text(encoding="utf-8")
            for line in mismatches(text, results):
                print(f"{rel}: {line}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
