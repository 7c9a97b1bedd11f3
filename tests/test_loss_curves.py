"""EDM Fig. 5a (edmlab.viz.loss_curves): the loss per σ bin read back from a run's CSV log, averaged over spans of
training, drawn per run and for several runs; missing or empty logs give one clear error. The log is written by
hand here in the layout of Lightning's CSVLogger with the module's ``loss_per_sigma/<lo>-<hi>`` columns; the
end-of-training figure of a real run is checked in tests/test_study.py."""
import math

import pytest

from edmlab.cli.loss_curves import main
from edmlab.viz.loss_curves import bin_centers, phase_means, plot_run, plot_runs, read_log

HEADER = ["epoch", "loss_per_sigma/0-1", "loss_per_sigma/1-4", "loss_per_sigma/16-inf", "loss_per_sigma/4-16", "step",
          "train/loss", "final/digits_fd"]


def write_log(run, rows, header=HEADER, batch_size=None):
    (run / "csv").mkdir(parents=True)
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in row) for row in rows]
    (run / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    if batch_size is not None:
        (run / "config.yaml").write_text(f"batch_size: {batch_size}\n")
    return run


# four logged steps with the bins' values, one row of other metrics only, one with an empty bin
ROWS = [[0, 1.0, 2.0, 9.0, 5.0, 4, 3.0, None],
        [0, 3.0, 4.0, 11.0, 7.0, 9, 3.0, None],
        [0, None, None, None, None, 10, None, None],
        [0, 0.5, None, 5.0, 3.0, 14, 2.0, None],
        [0, 0.7, 1.0, 7.0, 1.0, 19, 2.0, None],
        [0, None, None, None, None, 19, None, 42.0]]


def test_the_log_is_read_per_bin_in_sigma_order_and_averaged_per_span(tmp_path):
    log = read_log(write_log(tmp_path / "run", ROWS))
    assert log.edges == [(0.0, 1.0), (1.0, 4.0), (4.0, 16.0), (16.0, math.inf)]
    assert log.steps == [4, 9, 14, 19]
    assert log.loss[0] == [1.0, 2.0, 5.0, 9.0]
    assert math.isnan(log.loss[2][1])
    (a0, a1, first), (b0, b1, second) = phase_means(log, log.loss, 2)
    assert (a0, a1, b0, b1) == (4, 9, 14, 19)
    assert first == [2.0, 3.0, 6.0, 10.0]
    assert second == pytest.approx([0.6, 1.0, 2.0, 6.0], rel=1e-12)  # the empty bin of step 14 left out


def test_bins_sit_at_the_geometric_mean_of_their_edges_and_open_bins_half_a_ratio_out():
    # inner bins (1,4), (4,16): ratio 4, centres 2 and 8; the open bins at 1/√4 and 16·√4
    assert bin_centers([(0.0, 1.0), (1.0, 4.0), (4.0, 16.0), (16.0, math.inf)]) == [0.5, 2.0, 8.0, 32.0]


def test_figures_for_one_run_and_for_several(tmp_path, capsys):
    one = write_log(tmp_path / "a", ROWS, batch_size=128)
    two = write_log(tmp_path / "b", ROWS[:2])
    assert plot_run(one) == one / "loss_per_sigma.png" and (one / "loss_per_sigma.png").stat().st_size > 0
    assert plot_runs([one, two], tmp_path / "cmp" / "ladder.png").is_file()
    main([str(one), str(two), "--out", str(tmp_path / "cli.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli.png") and (tmp_path / "cli.png").is_file()


def test_a_run_without_a_csv_log_or_without_bins_gives_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no .*nolog/csv/metrics.csv: Fig. 5a reads the CSV log"):
        read_log(tmp_path / "nolog")
    empty = write_log(tmp_path / "empty", [[0, 4, 1.0]], header=["epoch", "step", "train/loss"])
    with pytest.raises(ValueError, match=r"has no loss_per_sigma/<lo>-<hi> columns"):
        read_log(empty)
    with pytest.raises(FileNotFoundError, match=r"no .*nolog/csv/metrics.csv"):
        main([str(tmp_path / "nolog")])
