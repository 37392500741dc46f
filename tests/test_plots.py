"""The pictures: every figure says which model, solver and NFE it shows, the learning curve numbers its
rounds as the schedule JSON does, the time-steps plot keeps a flow's t = 1, the plan plot says when the
hand choice is over the budget, and captioned sample grids caption every row."""
import json

import pytest
import torch

import ldd_fast as lf
from ldd_fast import plots
from ldd_fast.learn import LD3Config
from ldd_fast.planner import PlanResult
from ldd_fast.teacher import TeacherSpec

from test_cli import tiny_model

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(solver="unipc", order=3, nfe=3, shape=(1, 4, 4), n_train=4, n_valid=4, teacher=TeacherSpec(nfe=8),
            show_progress=False)


def texts(fig) -> str:
    """Everything a reader sees written on the figure."""
    out = []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts + ax.get_xticklabels() + ax.get_yticklabels()]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(out)


def learned_figures(monkeypatch, tmp_path, den, **kw):
    """lf.learn with out=: the figures it drew (plot_learning's return) and the schedule JSON it wrote."""
    drawn = {}
    draw = plots.plot_learning
    monkeypatch.setattr(plots, "plot_learning", lambda *a, **k: drawn.update(draw(*a, **k)) or drawn)
    res = lf.learn(den, out=str(tmp_path), **TINY, **kw)
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000 and (tmp_path / "time_steps.png").exists()
    return res, drawn, json.loads((tmp_path / "schedule.json").read_text())


def marked_rounds(fig) -> dict[str, float]:
    """Legend label -> x of each vertical line the learning curve draws."""
    ax = fig.axes[0]
    return {line.get_label(): line.get_xdata()[0] for line in ax.lines if len(set(line.get_xdata())) == 1
            and line.get_linestyle() in (":", "--")}


def test_learning_curve_numbers_rounds_as_the_json(monkeypatch, tmp_path):
    res, figs, saved = learned_figures(monkeypatch, tmp_path, tiny_model(), coefficients=True,
                                       config=LD3Config(rounds_xi=1, rounds_both=2, rounds_coef=2))
    best = saved["metrics"]["best_round"]
    ld3_best = json.loads((tmp_path / "ld3_schedule.json").read_text())["metrics"]["best_round"]
    curve = figs["learning_curve"]
    marks = marked_rounds(curve)
    selected = next(label for label in marks if label.startswith("selected"))
    assert marks[selected] == best and f"best_round {best}" in selected
    assert ld3_best in marks.values() and f"best_round {ld3_best}" in texts(curve)
    # Every plotted loss sits at its round's number in the JSON numbering (-1: the starting schedule).
    assert list(curve.axes[0].lines[0].get_xdata()) == [h["round"] for h in res.history]
    ticks = {t.get_text(): t.get_position()[0] for t in curve.axes[0].get_xticklabels()}
    assert ticks.get("init") == -1 and all(x == int(x) for x in ticks.values())
    for fig in figs.values():
        title = fig.axes[0].get_title()
        assert "GaussianMixture (EDM)" in title and "unipc3" in title and "NFE 3" in title, title
        assert "learned solver" in title
        assert fig.canvas.__class__.__name__ == "FigureCanvasAgg"


def test_time_steps_mark_a_flows_pure_noise_start_and_count_calls_in_integers(monkeypatch, tmp_path):
    from ldd_fast.analytic import GaussianMixture

    flow = lf.RectifiedFlow()
    net = GaussianMixture(flow, torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 0.2,
                          prediction="flow")
    den = lf.Denoiser(net, flow, prediction="flow", time_input="t")
    res, figs, saved = learned_figures(monkeypatch, tmp_path, den, mode="time",
                                       config=LD3Config(rounds_xi=1, rounds_both=1))
    assert res.schedule.t[0] == 1.0
    fig = figs["time_steps"]
    ax = fig.axes[0]
    notes = [t for t in ax.texts if "t = 1 (pure noise)" in t.get_text()]
    assert len(notes) == 1 and notes[0].xy[0] == 0 and "-inf" in notes[0].get_text()
    assert any(list(line.get_xdata()) == [0] for line in ax.lines)  # the t = 1 points, drawn on the edge
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(t == int(t) for t in ticks)
    assert "GaussianMixture (RectifiedFlow)" in ax.get_title() and "LD3 unipc3, NFE 3, time mode" in ax.get_title()


def test_plan_plot_notes_a_hand_choice_over_the_budget(tmp_path):
    row = dict(solver="unipc3", nfe=4, schedule="logsnr", backend="eager", predicted_ms=9.0, rmse=0.05,
               rmse_select=0.05)
    best = {**row, "budget_ms": 10.0, "batch": 8, "measured_ms": 9.5}
    hand = [dict(solver="dpmpp2", nfe=4, schedule="edm", backend="eager", rmse=0.2, measured_ms=13.25)]
    env = {"device": "cpu", "cpu": "Some CPU", "torch_threads": 1}
    res = PlanResult(best, [row, {**row, "nfe": 2, "predicted_ms": 5.0, "rmse": 0.3}], {}, hand, env=env)
    fig = plots.plot_plan(res, str(tmp_path / "plan.png"), model="digits (EDM)")
    assert (tmp_path / "plan.png").stat().st_size > 1000
    ax = fig.axes[0]
    assert "hand choice: over the budget, 13.2 ms > 10 ms" in [t.get_text() for t in ax.texts]
    assert any(list(line.get_xdata()) == [10.0, 10.0] for line in ax.lines)  # the budget line
    title = ax.get_title()
    assert all(s in title for s in ("digits (EDM)", "unipc3", "NFE 4", "1 thread", "cpu")), title
    within = PlanResult(best, [row], {}, [{**hand[0], "measured_ms": 8.0}], env=env)
    assert not plots.plot_plan(within).axes[0].texts


def test_bench_plot_title_and_the_cli_call(tmp_path):
    den = tiny_model()
    res = lf.bench(den, {"edm": lf.discretize(den.noise, 3, "edm", solver="unipc")}, backends=("eager",),
                   batches=(1, 2), threads=1, repeats=1, warmup=0, show_progress=False)
    fig = plots.plot_bench(res, str(tmp_path / "bench.png"), model="tiny (EDM)")  # the CLI passes (res, path)
    assert (tmp_path / "bench.png").stat().st_size > 1000
    title = fig.axes[0].get_title()
    assert all(s in title for s in ("tiny (EDM)", "unipc3", "NFE 3", "1 thread(s)", "batch 1, 2", "cpu")), title


def test_grid_captions_every_row_and_stays_plain_without_them(tmp_path):
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    x = torch.linspace(-1, 1, 6 * 16).reshape(6, 1, 4, 4)
    rows = ["a cat, unipc3, NFE 4", "a dog, unipc3, NFE 4", "a car, unipc3, NFE 4"]
    fig = plots.save_grid(x, str(tmp_path / "captioned.png"), title="digits (EDM): unipc3, NFE 4", rows=rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    assert ax.get_images()[0].get_array().shape[:2] == (3 * 6, 2 * 6)  # 3 rows of 2 samples
    assert ax.get_title() == "digits (EDM): unipc3, NFE 4"
    assert (tmp_path / "captioned.png").stat().st_size > 500
    assert plt.get_fignums() == open_figures and fig.canvas.__class__.__name__ == "FigureCanvasAgg"  # pyplot holds none
    image = plots.save_grid(x, str(tmp_path / "plain.png"))  # the PIL path of `ldd-fast sample`
    assert image.size == (3 * 6 * 4, 2 * 6 * 4)
    with pytest.raises(ValueError, match="fill"):
        plots.save_grid(x, None, rows=rows[:2] + rows + rows)
