"""`strategy eval --png`: a zero regret is a visible mark labelled 0, a missing value says so,
and every cut bar's value has one format."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from pomlia_hpc.strategy.evaluate import EvalResult, MethodResult
from pomlia_hpc.strategy.plot import MISSING, regret_chart, regret_figure


def _result() -> EvalResult:
    methods = {
        # a (top-1) regret of 0 on a, a missing value on b, a normal one on c
        "kernel-regret": MethodResult(top1=[0.0, math.nan, 1.0], topk=[0.0, 0.0, 0.5]),
        # random: far past the others' scale (cap 1.25 x 2.0 = 2.5), 9.999 and 10.25
        "random": MethodResult(top1=[9.999, 10.25, 3.0], topk=[4.0, 5.0, 6.0]),
        "best_mean": MethodResult(top1=[2.0, 0.5, 0.0], topk=[1.0, 1.0, 1.0]),
    }
    return EvalResult(
        metric="acc",
        k=3,
        datasets=["a", "b", "c"],
        n_strategies=4,
        restriction="all",
        methods=methods,
        bandwidths=[1.0],
    )


def test_zero_missing_and_cut_values_are_marked() -> None:
    fig = regret_figure(_result(), "acc: all strategies")
    try:
        top, bottom = fig.axes[0], fig.axes[1]
        texts = [t.get_text() for t in top.texts]
        # two zero regrets on top (kernel-regret on a, best_mean on c), each a tick and a "0"
        assert texts.count("0") == 2 and len(top.lines) == 2
        assert texts.count(MISSING) == 1  # kernel-regret on b: no candidate, said so
        # cut bars: one decimal each ("10.0" beside "10.2", not "10.0" beside "10")
        assert sorted(t for t in texts if t not in ("0", MISSING)) == ["10.0", "10.2", "3.0"]
        bottom_texts = [t.get_text() for t in bottom.texts]
        assert bottom_texts.count("0") == 2 and MISSING not in bottom_texts
        assert sorted(t for t in bottom_texts if t != "0") == ["4.0", "5.0", "6.0"]
        assert top.get_title() == "acc: all strategies"
    finally:
        plt.close(fig)


def test_the_chart_is_png_bytes() -> None:
    assert regret_chart(_result(), "t")[:8] == b"\x89PNG\r\n\x1a\n"
