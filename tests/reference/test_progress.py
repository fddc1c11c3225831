"""dpo_ref.progress, the one progress helper: plain lines on stderr in a log, a tqdm bar on a terminal."""

from __future__ import annotations

import dpo_ref.progress as progress_module
from dpo_ref.progress import phase, progress


def test_progress_prints_one_line_per_item_in_a_log(capsys):
    assert list(progress(["x", "y"], "dpo-ref cmd", str.upper)) == ["x", "y"]
    assert capsys.readouterr().err.splitlines() == ["dpo-ref cmd: 1/2, X", "dpo-ref cmd: 2/2, Y"]


def test_progress_on_a_terminal_is_a_bar_and_no_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    assert list(progress(["x", "y"], "dpo-ref cmd")) == ["x", "y"]
    assert "1/2, x" not in capsys.readouterr().err


def test_phase_in_a_log_is_one_line_when_it_starts_and_a_silent_bar(capsys):
    bar = phase("dpo-ref train", "dpo", 10, initial=4)  # a resumed run: 6 steps left
    for _ in range(6):
        bar.set_postfix(loss="0.1")
        bar.update(1)
    bar.close()
    assert bar.disable and capsys.readouterr().err.splitlines() == ["dpo-ref train: dpo (6 steps)"]


def test_phase_disabled_shows_nothing(capsys):
    bar = phase("dpo-ref train", "sft warm-up", 3, enabled=False)
    bar.update(3)
    bar.close()
    assert bar.disable and capsys.readouterr().err == ""


def test_phase_on_a_terminal_is_a_bar_from_where_it_starts(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    bar = phase("dpo-ref train", "dpo", 10, initial=4)
    assert not bar.disable and (bar.n, bar.total, bar.desc) == (4, 10, "dpo")
    bar.close()
    assert "(6 steps)" not in capsys.readouterr().err


def test_the_trainer_uses_the_one_helper():
    import dpo_ref.train.loop as loop

    assert loop.phase is phase and not hasattr(loop, "Progress")
