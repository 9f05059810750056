"""The switch-over's step timings in the migration log lines (issue 17:
say where the time after the stream goes)."""

from pyxen.xend.migration import steps


def test_each_step_against_the_one_before():
    marks = {"sent": 10.0, "loaded": 10.0155, "committed": 10.018, "running": 10.0415}
    assert steps(marks, "sent", ("loaded", "committed", "running")) == \
        "loaded +15.5 ms, committed +2.5 ms, running +23.5 ms"


def test_a_missing_step_is_left_out_and_nothing_known_says_so():
    assert steps({"sent": 1.0, "running": 1.01}, "sent", ("loaded", "running")) == "running +10.0 ms"
    assert steps({}, "sent", ("loaded",)) == "?"
    assert steps({"loaded": 2.0}, "sent", ("loaded",)) == "?"      # no starting mark
