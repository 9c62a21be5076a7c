"""The report's search heat map in a space with widths: op rows, then one row per stage's width."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from hwnas.report import plot_search  # noqa: E402
from profiler.spaces import load_space  # noqa: E402


def test_heat_map_of_a_space_with_widths_names_its_width_rows(tmp_path, monkeypatch):
    import matplotlib.axes

    space = load_space("tiny-mnist-w")
    ops = [[f"op{j}" for j in range(len(space.layers[i].candidates))] for i in space.searchable]
    widths = [[f"x{w:g}" for w in space.widths] for _ in range(space.width_stages)]
    probs = [[1 / len(r)] * len(r) for r in ops + widths]
    texts: list[str] = []
    ticks: list[list[str]] = []
    real_text, real_yticks = matplotlib.axes.Axes.text, matplotlib.axes.Axes.set_yticks
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, s, **kw: texts.append(s)
                        or real_text(self, x, y, s, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticks", lambda self, t, labels=None, **kw: ticks.append(labels)
                        or real_yticks(self, t, labels, **kw))
    _, png = plot_search({"probabilities": probs, "choices": [0] * space.n_choices}, tmp_path / "c.png",
                         tmp_path / "p.png", ops, widths)
    assert png is not None and png.stat().st_size > 0
    assert ticks[-1][-3:] == ["stage 0 width", "stage 1 width", "stage 2 width"]
    assert ticks[-1][0] == "0" and len(ticks[-1]) == space.n_choices
    assert sum(t.startswith("x0.5\n") for t in texts) == space.width_stages  # each width cell names its multiplier
    assert not any("\n" in t for t in texts[: sum(len(r) for r in ops)])  # op cells: the probability only
