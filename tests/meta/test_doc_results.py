"""The docs quote the results files, and their runnable examples run.

Every measured figure in README.md and docs/*.md sits in a span naming a file of docs/results/ and a key path
(`dpo_ref.docgen.results`); these tests fail when a figure was edited by hand, when a rerun changed a file without
`python -m dpo_ref.docgen.results refresh`, when a results file is quoted nowhere, and when a code block marked
`<!-- runnable -->` no longer runs.
"""

from __future__ import annotations

import json
import re

import pytest

from dpo_ref.docgen import results as R

DOCS = R.doc_files()
RUNNABLE = re.compile(r"<!-- runnable -->\n```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(R.ROOT)))
def test_every_quoted_figure_equals_its_results_file(path):
    assert R.mismatches(path.read_text(encoding="utf-8"), R.Results()) == []


def test_every_results_file_is_quoted_and_records_its_machine():
    quoted = {name for path in DOCS for name, *_ in R.spans(path.read_text(encoding="utf-8"))}
    files = {p.name for p in R.RESULTS.glob("*.json")}
    assert files == quoted, f"quoted nowhere: {files - quoted}; missing: {quoted - files}"
    script = (R.ROOT / "benchmarks" / "refresh_results.sh").read_text()
    experiments = re.search(r"for name in ([\w ]+); do", script).group(1).split()
    written = {f"{n}.json" for n in re.findall(r"\$OUT/(\w+)\.json", script) + experiments}
    assert files <= written, f"benchmarks/refresh_results.sh does not rewrite {files - written}"
    for name in files - {"bandit.json", "bench.json"}:  # these two keep the formats their commands documented
        data = json.loads((R.RESULTS / name).read_text())
        assert data["machine"]["cpu_count"] and data["machine"]["date"], name


def test_the_performance_page_has_no_measurement_outside_a_span():
    """Its tables and its times and sizes quote files only (settings, targets and budgets aside)."""
    text = (R.ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    text = R.BLOCK.sub("", R.SPAN.sub("", text))
    text = re.sub(r"```.*?```|`[^`]*`|≤ [\d.]+|budget \d+ s", "", text, flags=re.DOTALL)
    in_tables = [n for line in text.splitlines() if line.startswith("|") for n in re.findall(r"\d+\.\d+", line)]
    with_units = re.findall(r"\b\d+(?:\.\d+)? ?(?:MB|MiB|ms|s)\b", text)
    assert in_tables + with_units == []


def test_a_changed_figure_is_caught_and_refresh_rewrites_it(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"a": {"b.1": 0.123456}, "rows": [{"x": 2}], "lines": ["p", "q"]}))
    results = R.Results(tmp_path)
    good = (
        "x <!-- r:r.json:a.b.1:.3f -->0.123<!-- /r --> <!-- r:r.json:rows.0.x:d -->2<!-- /r -->\n"
        "<!-- r-block:r.json:lines -->\n```\np\nq\n```\n<!-- /r-block -->\n"
    )
    assert R.mismatches(good, results) == []
    edited = good.replace(">0.123<", ">0.124<")
    assert len(R.mismatches(edited, results)) == 1 and R.render(edited, results) == good
    assert len(R.mismatches(good.replace("p\nq", "p\nr"), results)) == 1
    assert "no key" in R.mismatches(good.replace("rows.0.x", "rows.0.y"), results)[0]
    assert "does not exist" in R.mismatches(good.replace("r.json:a", "gone.json:a"), results)[0]


@pytest.mark.parametrize(
    "path,index",
    [(p, i) for p in DOCS for i, _ in enumerate(RUNNABLE.findall(p.read_text(encoding="utf-8")))],
    ids=lambda v: str(v.relative_to(R.ROOT)) if hasattr(v, "relative_to") else str(v),
)
def test_runnable_example_runs(path, index, monkeypatch, tmp_path):
    """The block runs as a user would paste it; only the oracle's examples per check are cut to keep it fast."""
    import dpo_ref

    verify = dpo_ref.verify
    monkeypatch.setattr(dpo_ref, "verify", lambda *a, **k: verify(*a, **{"max_examples": 5, **k}))
    monkeypatch.chdir(tmp_path)
    code = RUNNABLE.findall(path.read_text(encoding="utf-8"))[index]
    exec(compile(code, f"{path.name} runnable block {index}", "exec"), {"__name__": "__doc_example__"})


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens) and explicit <a id>s."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.DOTALL), flags=re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(R.ROOT)))
def test_relative_links_reach_a_file_and_an_anchor(path):
    text = path.read_text(encoding="utf-8")
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.DOTALL)):
        if re.match(r"[a-z]+:", target):
            continue  # an external address
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no such anchor")
    assert bad == []
