"""``sampling.png`` is a grid of task panels with a caption, like ``merge_curves.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402

from weightspace.synthesis.common import SynthesisError  # noqa: E402
from weightspace.synthesis.figures import plot_sampling, sampling_figure  # noqa: E402


def frames(tasks: int, *, empty: int = 0) -> dict[str, dict[str, pd.DataFrame]]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(tasks + empty):
        n = 0 if i >= tasks else 12
        out[f"task-{i}"] = {
            "sampling": pd.DataFrame({"novelty": rng.random(n), "accuracy": rng.random(n)}),
            "noise_curve": pd.DataFrame({"novelty": [0.1, 0.3], "accuracy": [0.8, 0.5]}),
        }
    return out


@pytest.mark.parametrize(("tasks", "grid"), [(1, (1, 1)), (3, (1, 3)), (5, (2, 3)), (7, (3, 3))])
def test_sampling_is_a_grid(tasks: int, grid: tuple[int, int]) -> None:
    fig = sampling_figure(frames(tasks, empty=1))  # a task without samples gets no panel
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == grid
    width, height = fig.get_size_inches()
    assert width / height < 4  # the old one-row strip of five tasks was 5.5 : 1
    assert sum(ax.axison for ax in fig.axes) == tasks
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles[0] == "task-0 (12 samples)"
    plt.close(fig)


def test_sampling_without_samples_is_refused_and_a_figure_is_written(tmp_path: Path) -> None:
    with pytest.raises(SynthesisError):
        sampling_figure(frames(0, empty=2))
    path = plot_sampling(frames(2), tmp_path / "sampling.png")
    assert path.is_file() and path.stat().st_size > 1000
