"""The curve plot: one distinct colour per label, shared by its test and train lines."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from bioprop import plots


@pytest.mark.parametrize("n", [1, 3, 12, 25])
def test_labels_get_distinct_colours(n) -> None:
    colours = plots._colors(n)
    assert len(colours) == n and len(set(colours)) == n


def test_test_and_train_lines_share_the_label_colour(tmp_path, monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    row = {"kind": "epoch", "test_acc": 0.5, "train_acc": 0.6, "test_loss": 1.0, "train_loss": 0.9}
    diag = {"kind": "diag", "step": 1, "cos/w": 0.5, "angle/w": 60.0}
    runs = {f"run {i}": [{**row, "epoch": 1}, {**row, "epoch": 2}, diag] for i in range(12)}
    plots.plot_runs(runs, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    acc, loss, align = figures[0].axes
    for ax, per_label in ((acc, 2), (loss, 2), (align, 2)):
        lines = ax.get_lines()
        assert len(lines) == 12 * per_label
        colours = [tuple(line.get_color()) for line in lines]
        assert all(colours[i] == colours[i + 1] for i in range(0, len(colours), 2))
        assert len(set(colours)) == 12
