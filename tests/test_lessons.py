"""gpt.analysis.lessons: the lessons' figures plot what the runs measured (synthetic runs of known figures)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from PIL import Image

from gpt.analysis.figures import save_png
from gpt.analysis.lessons import ANALYSES
from gpt.analysis.runs import load_run
from gpt.analysis.sweep_report import Measured
from gpt.base.config import config_from_dict

from .test_report import PNG_SIGNATURE, synthetic_run

LESSONS = ("capacity", "architecture", "data", "regularisation")


def measured_runs(tmp_path: Path) -> list[Measured]:
    """Three runs with the synthetic metrics of test_report, told apart by size, data and losses."""
    runs = []
    for index, (name, train_tokens) in enumerate([("small", 900), ("medium", 9_000), ("large", 90_000)]):  # fmt: skip
        run = load_run(synthetic_run(tmp_path / name), name)
        shift = 0.1 * index  # each run's losses 0.1 above the one before
        evals = [
            {**r, "train_loss": r["train_loss"] + shift, "val_loss": r["val_loss"] + shift}
            for r in run.evals
        ]
        run = dataclasses.replace(run, evals=evals, parameters=1_000 * 10**index)
        config = config_from_dict({"model": {"arch": ["gpt", "mlp", "cnn"][index]}})
        runs.append(Measured(name, {}, config, run, train_tokens, 10.0, 15.0))
    return runs


def test_every_lesson_draws_small_pngs(tmp_path):
    runs = measured_runs(tmp_path)
    for name in LESSONS:
        figures = ANALYSES[name](runs)
        assert figures, name
        for figure in figures:
            path = tmp_path / figure.file_name
            save_png(figure.figure, path)
            assert path.read_bytes()[:8] == PNG_SIGNATURE
            with Image.open(path) as image:
                image.verify()
            assert path.stat().st_size < 80_000  # small enough to commit
            assert figure.title and figure.caption


def line_artist(figure, label: str):
    (found,) = [ln for ax in figure.axes for ln in ax.get_lines() if ln.get_label() == label]
    return found


def line(figure, label: str):
    found = line_artist(figure, label)
    return list(found.get_xdata()), list(found.get_ydata())


def test_capacity_plots_each_loss_against_parameters(tmp_path):
    runs = measured_runs(tmp_path)
    (figure,) = ANALYSES["capacity"](runs)
    assert line(figure.figure, "best val loss") == (
        [1_000, 10_000, 100_000],
        [m.best_val for m in runs],
    )
    assert line(figure.figure, "test loss (best weights)")[1] == [m.test_loss for m in runs]
    assert line(figure.figure, "final train loss")[1] == [m.final_train for m in runs]


def test_data_plots_the_gap_against_training_tokens(tmp_path):
    runs = measured_runs(tmp_path)
    (figure,) = ANALYSES["data"](runs)
    gaps = [ln for ln in figure.figure.axes[1].get_lines() if len(ln.get_xdata()) == 3]
    assert [list(ln.get_xdata()) for ln in gaps] == [[900, 9_000, 90_000]]
    assert list(gaps[0].get_ydata()) == [m.final_val - m.final_train for m in runs]


def test_in_data_png_a_final_val_loss_at_the_best_one_shows_both(tiny_run):
    """A run whose last evaluation is its best has its final and best val loss at one point: the
    best's marker is a ring around the final's, so that neither hides the other."""
    run = load_run(tiny_run, "tiny")
    config = config_from_dict(yaml.safe_load((tiny_run / "config.yaml").read_text()))
    runs = [Measured(f"{t}", {}, config, run, t, 10.0, 15.0) for t in (900, 9_000, 90_000)]
    assert runs[0].final_val == runs[0].best_val  # its loss still falls at the end
    (figure,) = ANALYSES["data"](runs)
    final = line_artist(figure.figure, "final val loss")
    best = line_artist(figure.figure, "best val loss")
    assert list(final.get_ydata()) == list(best.get_ydata())  # the same points
    assert best.get_fillstyle() == "none" and best.get_markersize() > final.get_markersize()
    assert final.get_fillstyle() == "full"
