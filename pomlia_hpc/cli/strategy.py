"""``pomlia strategy import/sources/eval/outcomes`` and ``pomlia recommend``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console, err_console
from pomlia_hpc.cli.jsonout import print_json
from pomlia_hpc.cli.pathopts import path_argument, path_option
from pomlia_hpc.cli.tables import MISSING
from pomlia_hpc.errors import InputError

if TYPE_CHECKING:
    from pomlia_hpc.strategy.evaluate import EvalResult

strategy_app = typer.Typer(
    help="The strategy knowledge base: published results and the registry's runs.",
    no_args_is_help=True,
)
app.add_typer(strategy_app, name="strategy")


@strategy_app.command("import")
def strategy_import(
    file: Annotated[Path, path_argument(help="Results in the long format (docs/strategy.md).")],
    source: Annotated[str, typer.Option("--source", help="Name of this table in the KB.")],
    meta: Annotated[
        Path | None,
        path_option("--meta", help="Meta-features per data set (unless given as meta_ columns)."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a source of the same name.")
    ] = False,
) -> None:
    """Import a table of published results, all or nothing (one transaction)."""
    from pomlia_hpc.strategy.kb import import_table

    rep = import_table(STATE.registry(), file, source, meta_path=meta, replace=replace)
    again = f", replacing {rep.replaced}" if rep.replaced else ""
    console.print(
        f"source [bold]{rep.source}[/]: {rep.n_results} results on {rep.n_datasets} data sets "
        f"from {rep.file}{again} ({rep.seconds:.2f} s)"
    )


@strategy_app.command("sources")
def strategy_sources() -> None:
    """List the imported sources."""
    from pomlia_hpc.strategy.kb import list_sources

    table = Table(title="knowledge-base sources")
    for col in ("name", "results", "data sets", "metrics", "file"):
        table.add_column(col, overflow="fold")
    for s in list_sources(STATE.registry()):
        table.add_row(s.name, str(s.n_results), str(s.n_datasets), ", ".join(s.metrics), s.file)
    console.print(table)


def _f(x: float | None, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _write_chart(result: EvalResult, path: Path, title: str) -> None:
    from pomlia_hpc.files import write_atomic
    from pomlia_hpc.strategy.plot import regret_chart

    try:
        write_atomic(path, regret_chart(result, title), fsync=False)
    except OSError as e:
        raise InputError(
            f"--png {path}: cannot be written ({e.strerror or e}); expected a file in a "
            "writable folder"
        ) from e


@strategy_app.command("eval")
def strategy_eval(
    source: Annotated[
        str, typer.Option("--source", help="Imported source, or 'registry' for the runs.")
    ],
    metric: Annotated[str, typer.Option("--metric", help="acc, auc or f1_macro (any case).")],
    k: Annotated[int, typer.Option("--k", help="Also score the best of the first K picks.")] = 3,
    cheap: Annotated[
        bool,
        typer.Option("--cheap", help="Only strategies with inputs <= 64 px or frozen features."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    png: Annotated[
        Path | None,
        path_option(
            "--png",
            help="Also draw each held-out data set's regrets, per method, into this PNG file "
            "(the path must end in .png).",
        ),
    ] = None,
) -> None:
    """Leave-one-dataset-out: regret of the recommender's top-1 and best-of-top-k against
    random, best-mean, best-mean-rank and nearest-data-set baselines (metric points)."""
    from pomlia_hpc.files import check_png_suffix
    from pomlia_hpc.strategy.service import evaluate_source

    if png is not None and png.is_dir():
        raise InputError(f"--png {png}: is a folder; expected a file name (e.g. regrets.png)")
    if png is not None:
        check_png_suffix(png, "--png")  # before the evaluation, as data show --grid does
    result = evaluate_source(STATE.registry(), source, metric, k=k, cheap=cheap)
    metric = result.metric  # as the knowledge base spells it (`--metric ACC` is acc)
    data = result.to_dict()
    data["metric"], data["source"] = metric, source
    if png is not None:
        _write_chart(result, png, f"{source}, {metric}: {result.restriction}")
    if as_json:
        print_json(data)
        return
    table = Table(
        title=f"leave-one-dataset-out on {source}, {metric}: {len(result.datasets)} data sets, "
        f"{result.n_strategies} strategies ({result.restriction})",
        caption=f"regret: metric points (x 100) below the best strategy on the held-out data "
        f"set, mean over the data sets; lower is better. The learner's similarity: "
        f"{result.similarity}",
    )
    for col in ("method", "top-1 regret (pts)", f"best-of-top-{k} regret (pts)"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, summary in data["summary"].items():
        table.add_row(name, _f(summary["top1_mean"]), _f(summary["topk_mean"]))
    console.print(table)
    if png is not None:
        typer.echo(f"per-data-set regrets drawn in {png}")


@strategy_app.command("outcomes")
def strategy_outcomes(
    task: Annotated[
        str | None, typer.Option("--task", help="Only answers for this task (name or id).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many answers, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """How recorded recommendations turned out: each answer's top picks and warm-start
    configurations against the runs on its task since (regret in metric points)."""
    from pomlia_hpc.strategy.outcomes import outcomes

    found = outcomes(STATE.registry(), task, limit)
    if as_json:
        print_json([o.to_dict() for o in found])
        return
    table = Table(
        title=f"recommendations and the runs since ({len(found)}); regret in metric points (x 100)"
    )
    for col in (
        "id",
        "task",
        "time",
        "runs since",
        "best since",
        "top-1 regret",
        "best of top k regret",
        "warm regret",
    ):
        table.add_column(col, overflow="fold")
    for o in found:
        best = f"{o.best_value:.3f} (run {o.best_run_id})" if o.best_value is not None else MISSING
        table.add_row(
            str(o.recommendation_id),
            o.task,
            f"{o.created_at:%Y-%m-%d %H:%M}",
            str(o.n_runs) + (f" (+{o.n_short} too short)" if o.n_short else ""),
            best,
            _regret(o.top1_regret, o.picks[:1]),
            _regret(o.topk_regret, o.picks),
            _regret(o.warm_regret, o.warm),
        )
    console.print(table)
    console.print(
        "top-1 / best of top k / warm: regret of the answer's first pick, of its best pick and of "
        "its best AutoML warm-start configuration (scored by the runs of that configuration "
        "itself) against the best run since (not run: none of them has run on the task since); "
        "runs below a third of the task's full budget, or 9 epochs, are too short to count, as "
        "in the knowledge base"
    )


def _regret(value: float | None, picks: list[Any]) -> str:
    if value is not None:
        return f"{value:.2f}"
    return "no picks" if not picks else "not run"


def _expected_text(r: dict[str, Any]) -> str:
    """Expected value ± spread (n_eff data sets), * when it is the published strategy's."""
    if r["expected"] is None:
        return ""
    spread = "" if r.get("spread") is None else f" ± {r['spread']:.3f}"
    star = "*" if r.get("expected_of_published") else ""
    return f"{r['expected']:.3f}{spread}{star} (n={r.get('n_eff', 0):.1f})"


def _strategy_text(s: dict[str, Any]) -> str:
    extra = " +nearest images" if s.get("extra_data") == "nearest" else ""
    return f"{s.get('arch')} {s.get('init')}/{s.get('mode')} {s.get('img_size')}px{extra}"


def _initial_path(text: str | None) -> Path | None:
    """``--write-initial``'s path; one ending in a separator (``dir/``) is refused, since
    ``Path`` drops it and the recommender would write a file named as the folder."""
    if text is not None and text.endswith(("/", os.sep)):
        raise InputError(
            f"--write-initial {text} ends in a path separator (a folder): expected the path "
            f"of a JSON file to write, e.g. {text.rstrip('/' + os.sep) or '.'}/warm.json"
        )
    return None if text is None else Path(text)


@app.command("recommend")
def recommend_cmd(
    task: Annotated[str, typer.Argument(help="Registered task name or id.")],
    k: Annotated[int, typer.Option("--k", help="How many strategies.")] = 5,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost",
            help="Only strategies whose run here (their AutoML translation) is expected to "
            "train within this many seconds (wall time; a positive finite number, leave it "
            "out for no limit).",
        ),
    ] = None,
    max_gpu_hours: Annotated[
        float | None,
        typer.Option(
            "--max-gpu-hours",
            help="Only strategies expected to need at most this many GPU-hours (a positive "
            "finite number).",
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="Knowledge-base source, repeatable.",
            show_default="every imported source and the registry's runs",
        ),
    ] = None,
    write_initial: Annotated[
        str | None,
        typer.Option(
            "--write-initial",
            help="Write the AutoML configurations to a file for `automl run --initial FILE`.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """The top-k strategies for TASK: expected metric +- spread over similar data sets (n:
    their effective number), expected cost of the run it becomes here, evidence, and the
    cost/metric Pareto front. Runs of the task below a third of its full budget (or 9
    epochs, if fewer) are not counted (a note names them). Each answer is recorded."""
    from pomlia_hpc.strategy.recommend import recommend

    answer = recommend(
        STATE.registry(),
        task,
        k=k,
        max_cost_s=max_cost,
        max_gpu_hours=max_gpu_hours,
        sources=source or None,
        initial_file=_initial_path(write_initial),
    )
    n_written = len(answer["initial"]) if write_initial is not None else None
    _warn_seen_weights(task, answer)
    if as_json:
        print_json(answer)
        return
    _print_answer(answer)
    if n_written is not None:
        console.print(f"wrote {n_written} AutoML configuration(s) to {write_initial}")


def _warn_seen_weights(task: str, answer: dict[str, Any]) -> None:
    """Warn (on stderr, so --json stays JSON) of the recommended pretrained weights that
    trained on the task's val/test images: the recommender picks them by similarity alone,
    and `automl run --from-recommendation` leaves out the configurations starting from them."""
    # Imported here: it reads the stores, which a recommendation otherwise never opens.
    from pomlia_hpc.automl.seen_init import seen_start_problems

    weights = answer.get("sources_of_weights") or {}
    found = seen_start_problems(
        STATE.registry(), task, encoder=weights.get("encoder"), init_model=weights.get("model")
    )
    for init, why in found.items():
        err_console.print(
            f"[yellow]warning:[/] {why}; `automl run --from-recommendation` leaves out the "
            f"configurations with init={init}",
            soft_wrap=True,
            highlight=False,
        )


def _print_answer(answer: dict[str, Any]) -> None:
    """The recommendation's tables: the top-k, notes, the Pareto front."""
    similar = ", ".join(
        # a task with runs of its own is its own nearest "data set": say so
        f"{s['dataset']}{' (this task: its own runs)' if s.get('own_runs') else ''}"
        f" ({s['weight']:.2f})"
        for s in answer["similar"][:3]
    )
    table = Table(
        title=f"recommendation {answer.get('recommendation_id')} for {answer['task']} "
        f"({answer['metric']}), {answer['n_datasets']} known data sets, "
        f"{answer['n_strategies']} strategies",
        caption=f"similar ({answer['similarity']}): {similar}; expected: similarity-weighted "
        "mean ± spread over the similar data sets (n: their effective number; no spread when "
        "one carries the weight), of the published strategy where the run here differs (*); "
        "cost: expected training wall time of the run here",
    )
    for col in (
        "#",
        "strategy",
        f"expected {answer['metric']}",
        "cost (s)",
        "GPU-hours",
        "evidence (data set, value)",
    ):
        table.add_column(col, overflow="fold")
    for r in answer["strategies"]:
        ev = "; ".join(f"{e['dataset']} {e['value']:.3f}" for e in r["evidence"][:2])
        exp = _expected_text(r)
        table.add_row(
            str(r["rank"]),
            _strategy_text(r["strategy"]) + (f"\n→ {r['note']}" if r["note"] else ""),
            exp,
            f"{r['cost']['wall_s']:.0f} ({r['cost']['basis']})",
            f"{r['cost']['gpu_hours']:.3f}",
            ev,
        )
    console.print(table)
    if answer.get("note"):
        console.print(f"note: {answer['note']}")
    if answer.get("other_dims"):
        other = answer["other_dims"]
        console.print(
            f"note: {len(other)} known data set(s) not of the task's dimensionality "
            f"({answer['dims']}D) were not compared: {', '.join(other)}"
        )
    for sr in answer.get("short_runs", []):
        best = "" if sr["value"] is None else f" (best test {sr['value']:.3f}, a lower bound)"
        console.print(
            f"note: this task's {sr['n']} run(s) of {_strategy_text(sr['strategy'])} reached at "
            f"most {sr['epochs']:g} of {sr['full_epochs']} epochs, below the "
            f"{sr['counted_epochs']:g} that count: not counted{best}"
        )
    front = Table(
        title="cost/metric Pareto front on the expected regret of the ranking (cheapest first; "
        "the first 6, --json: all)"
    )
    for col in ("strategy", f"expected {answer['metric']}", "cost (s)"):
        front.add_column(col, overflow="fold")
    for p in answer["pareto"][:6]:
        exp = "" if p["expected"] is None else f"{p['expected']:.3f}"
        front.add_row(_strategy_text(p["strategy"]), exp, f"{p['cost']['wall_s']:.0f}")
    console.print(front)
