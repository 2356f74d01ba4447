"""The `sweep` command.

Exit codes: 0 done, 2 bad input (the message names the file, the field and
what is allowed; nothing is written), 1 anything else.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

# TensorFlow's and Ray's start-up chatter is not a warning the user can act on; real
# Python warnings still show. Set before anything imports them.
from .engines.runtime import quiet_environment  # noqa: E402

quiet_environment()

import click
from rich.console import Console

from .driver.progress import plan_text, progress_printer, summary_text
from .probes.bench import DEFAULT_SET
from .probes.bench import SETS as BENCH_SETS
from .probes.lrfind import DEFAULT_RULE, RULES
from .results import reports
from .results.rangetest import LRFIND_FILE
from .results.tables import SMALL_STUDY, map_table, pivot_axes, pivot_table, runs_table, top_axes
from .spec import MAX_RUNS, SpecError, load
from .verdict import STATUSES

console = Console()
err = Console(stderr=True)


def wide(columns: int) -> Console:
    """The console, at least `columns` wide: a table whose cells must not be cut (a log file or a
    pipe is 80 columns to rich) is printed whole and left to wrap."""
    return Console(width=max(console.width, columns))


class BadInput(click.ClickException):
    exit_code = 2


def _load_study(path: str, max_runs: int = MAX_RUNS):
    """The checked study, its model knobs' names free as columns (`maps.check_knob_names`), a user
    builder called once (`engines.check_builder`); else exit 2."""
    from .engines import check_builder
    from .results.maps import check_knob_names

    try:
        study = load(path, max_runs)
        check_knob_names(study)
        check_builder(study)
        return study
    except SpecError as exc:
        raise BadInput(str(exc)) from None


MAX_RUNS_OPTION = click.option("--max-runs", type=click.IntRange(min=1), default=MAX_RUNS, show_default=True,
                               help="Refuse a plan with more runs than this (a guard against typos in a grid).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stability-sweep")
@click.option("--no-compile-cache", is_flag=True,
              help="Compile every program afresh: no reuse of XLA programs compiled by earlier "
                   "processes (the same as SWEEP_COMPILE_CACHE=off).")
def main(no_compile_cache: bool) -> None:
    """Measure where TensorFlow training is stable."""
    if no_compile_cache:
        from .engines.xla import ENV

        os.environ[ENV] = "off"  # this process and the workers it starts (they inherit it)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@MAX_RUNS_OPTION
def validate(study_file: str, max_runs: int) -> None:
    """Check STUDY_FILE and print the plan; exit 2 naming every wrong field."""
    for part in plan_text(_load_study(study_file, max_runs)):
        console.print(part)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--results", "results_dir", default="results", show_default=True, help="Where DIR/<study name>/ goes.")
@click.option("--address", default=None, envvar="RAY_ADDRESS", show_envvar=True,
              help="Ray cluster to attach to (e.g. 10.0.0.1:6379); without it a private local Ray is started.")
@click.option("--engine", type=click.Choice(["keras", "population"]), default=None, help="Override the study's engine.")
@click.option("--max-trials", type=click.IntRange(min=1), default=None, help="Stop after this many runs (resume later).")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage (postgresql://..., mysql://..., sqlite:///..., redis://...); "
                   "default: the journal file DIR/<study>/study.journal.")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="CPUs per worker (and TensorFlow threads) when the cluster has no GPU; with GPUs: one worker per GPU.")
@MAX_RUNS_OPTION
@click.option("--tensorboard", "logdir", default=None, metavar="DIR",
              help="Also write the runs as TensorBoard event files into DIR as they are recorded "
                   "(what `sweep tensorboard` writes); `tensorboard --logdir DIR` shows the sweep live.")
@click.option("--tensorboard-aggregate", is_flag=True,
              help="With --tensorboard: one TensorBoard run per configuration (the seeds' median curves, P(stable)).")
def run(study_file: str, results_dir: str, address: str | None, engine: str | None, max_trials: int | None,
        storage: str | None, cpus_per_worker: float, max_runs: int, logdir: str | None,
        tensorboard_aggregate: bool) -> None:
    """Run or resume STUDY_FILE; results go to RESULTS/<study name>/."""
    from .driver import session as driver
    from .driver.optuna_study import StorageConflict

    if tensorboard_aggregate and not logdir:
        raise click.UsageError("--tensorboard-aggregate needs --tensorboard DIR")
    s = _load_study(study_file, max_runs)
    if logdir:
        _require_tensorboard()  # before anything is written
    try:
        out = driver.prepare_dir(s, results_dir)
        before = Counter(r["status"] for r in reports.done_rows(out).values())
    except (PermissionError, driver.StudyConflict, driver.StudyBusy, reports.ResultsError) as exc:
        raise BadInput(str(exc)) from None
    total = driver.planned_runs(s)
    where = f"Ray at {address}" if address else "a private local Ray"
    click.echo(f"{s.name}: {total} runs planned, {sum(before.values())} already recorded in {out}; "
               f"training on {where}; {driver.engine_line(s, engine)}")
    follower = _tensorboard_follower(out, logdir, tensorboard_aggregate) if logdir else None
    update, stop = progress_printer(total, before, console)
    if follower:
        follower.on_batch = update
    try:
        summary = driver.run(s, results_dir, engine=engine, max_trials=max_trials, address=address,
                             storage=storage, cpus_per_worker=cpus_per_worker, on_batch=follower or update)
    except (driver.StudyBusy, StorageConflict, reports.ResultsError) as exc:
        raise BadInput(str(exc)) from None
    except driver.ResultsWriteError as exc:  # full disk: a clear line, not a traceback (exit 1)
        raise click.ClickException(str(exc)) from None
    finally:
        stop()
        if follower:
            follower.close()
            _open_files_note(follower.board)
    for part in summary_text(summary, reports.load_trials(summary.study_dir)):
        console.print(part)


def _require_tensorboard() -> None:
    """Exit 1 naming the extra when the tensorboard package is missing."""
    from .plots import tensorboard as tb

    try:
        tb.modules()
    except tb.TensorBoardMissing as exc:
        raise click.ClickException(str(exc)) from None


def _tensorboard_board(study_dir, logdir: str | None, aggregate: bool):
    """A study's TensorBoard log directory (`plots.tensorboard.Board`); exit 1 without the
    tensorboard package, 2 naming the path for a directory that cannot take the runs."""
    from .plots import tensorboard as tb

    try:
        return tb.Board(study_dir, logdir, aggregate=aggregate)
    except tb.TensorBoardMissing as exc:
        raise click.ClickException(str(exc)) from None
    except reports.ResultsError as exc:
        raise BadInput(str(exc)) from None


def _tensorboard_follower(study_dir, logdir: str, aggregate: bool):
    """`run --tensorboard`: the runs already recorded written now, the rest as they are committed."""
    from .plots.tensorboard import Follower, LogdirError

    board = _tensorboard_board(study_dir, logdir, aggregate)
    try:
        follower = Follower(board, warn=lambda line: click.echo(line, err=True))
    except (LogdirError, reports.ResultsError) as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"TensorBoard: {board.logdir} ({board.present + board.written} runs there, "
               f"{board.written} of them written now); `tensorboard --logdir {board.logdir}`")
    return follower


def _open_files_note(board) -> None:
    from .plots.tensorboard import open_files_note

    if note := open_files_note(board.present + board.written):
        click.echo(note, err=True)


@main.command("tensorboard")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--logdir", default=None, metavar="DIR", help="Where the event files go (default STUDY_DIR/tensorboard).")
@click.option("--aggregate", is_flag=True,
              help="One run per configuration (the seeds' median curves, P(stable)) instead of one per run.")
def tensorboard_(study_dir: str, logdir: str | None, aggregate: bool) -> None:
    """Write the study as TensorBoard event files: each run's curves as scalars, the sweep as an
    HParams experiment; runs already there are kept, so a rerun adds only new ones."""
    from .plots.tensorboard import LogdirError

    board = _tensorboard_board(study_dir, logdir, aggregate)
    try:
        board.sync()
    except (LogdirError, reports.ResultsError) as exc:
        raise BadInput(str(exc)) from None
    kind = "configurations" if aggregate else "runs"
    click.echo(f"{board.logdir}: wrote {board.written} {kind}, {board.present} already there; "
               f"view: tensorboard --logdir {board.logdir} (the HPARAMS tab)")
    _open_files_note(board)


@main.command()
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--status", type=click.Choice(list(STATUSES)), default=None, help="Only runs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def show(study_dir: str, status: str | None, limit: int) -> None:
    """List the runs of a finished or running study."""
    try:
        df = reports.load_trials(study_dir)
    except reports.ResultsError as exc:
        raise BadInput(str(exc)) from None
    console.print(runs_table(df, study_dir, status, limit))


@main.command()
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.argument("trial", type=int)
def repro(study_dir: str, trial: int) -> None:
    """Print a standalone Keras script that reproduces one run."""
    from .results.repro import script

    try:
        click.echo(script(study_dir, trial), nl=False)
    except (reports.ResultsError, LookupError, FileNotFoundError) as exc:
        raise BadInput(str(exc)) from None


@main.command()
@click.option("--quick", is_flag=True, help="CI form: 2 epochs and a few runs per study (not reference figures).")
@click.option("--results", "results_dir", default="results", show_default=True,
              help="Where the claim studies, claims.parquet and REPORT.md go.")
@click.option("--engine", type=click.Choice(["keras", "population"]), default=None,
              help="Engine of the learning-rate sweep studies (default: the study default); the "
                   "reference studies train on keras, the space studies on population.")
def reproduce(quick: bool, results_dir: str, engine: str | None) -> None:
    """Run every document claim; write claims.parquet and REPORT.md; print the claims table."""
    from .claims.report import claim_text
    from .claims.reproduce import reproduce as run_claims

    command = "sweep reproduce" + (" --quick" if quick else "") + f" --results {results_dir}" + (
        f" --engine {engine}" if engine else "")
    claims = run_claims(results_dir, quick=quick, engine=engine, command=command,
                        on_study=lambda s: click.echo(f"{s.name}: {len(s.plan())} runs"))
    click.echo(f"{results_dir}/claims.parquet: {int(claims['reproduced'].sum())} of {len(claims)} claims reproduced")
    # One block of sentences per claim: eight columns of prose do not fit a terminal.
    for _, c in claims.iterrows():
        _print_lines(*claim_text(c))
    click.echo(f"wrote {Path(results_dir) / 'claims.parquet'} and {Path(results_dir) / 'REPORT.md'}")


@main.command()
@click.option("--quick", is_flag=True, help="CI form: a few configurations and epochs, 2 runs in the loops "
              "(not reference figures).")
@click.option("--set", "sets", type=click.Choice(list(BENCH_SETS)), multiple=True, default=(DEFAULT_SET,),
              show_default=True, help="Bench set: mlp (the catalog MLP), user_mlp (the same as a user builder), cnn, rnn; "
              "repeat to measure several in one run, set after set in each repetition.")
@click.option("--results", "results_dir", default="results", show_default=True,
              help="bench.parquet goes here (the rows of other sets already in it are kept).")
def bench(quick: bool, sets: tuple[str, ...], results_dir: str) -> None:
    """Time the population engine (cold, and with its compiled programs cached) and the plain
    Keras loop on the same configurations of each bench set (mlp: also the keras engine through
    the pool); for one set the last lines are `speedup_cached: N.Nx` and `speedup: N.Nx`
    (population / plain loop)."""
    from .probes.bench import BenchFileError, run_bench, sets_of, speedup_lines, table

    try:
        measurements = run_bench(quick=quick, results=results_dir, progress=lambda s: click.echo(s, err=True),
                                 sets=sets)
    except BenchFileError as exc:
        raise BadInput(str(exc)) from None
    for name in sets_of(measurements):
        wide(110).print(table(measurements, quick, Path(results_dir) / "bench.parquet", name))  # seven columns, uncut
    for line in speedup_lines(measurements):
        click.echo(line)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--results", "results_dir", default="results", show_default=True, help="Where DIR/<study name>/ is.")
@click.option("--rule", type=click.Choice(list(RULES)), default=DEFAULT_RULE, show_default=True,
              help="Whose range test: schedule, smoothing, stop and suggestion rule (docs/lrfind.md).")
def lrfind(study_file: str, results_dir: str, rule: str) -> None:
    """The LR range test of every setting of STUDY_FILE, beside the edge the sweep measured;
    writes RESULTS/<study>/lrfind.parquet (and the suggestion into boundary.parquet)."""
    from .probes import lrfind_study as rangetest
    from .driver.session import StudyBusy, StudyConflict

    s = _load_study(study_file)
    try:
        out = rangetest.run_study(s, results_dir, rule, progress=lambda line: click.echo(line, err=True))
        comparison = rangetest.compare(out)
    except (PermissionError, StudyConflict, StudyBusy, reports.ResultsError) as exc:
        raise BadInput(str(exc)) from None
    # Ten columns do not fit 80 characters; a cut column would hide the very comparison.
    wide(140).print(
        rangetest.table(comparison, f"{out}: LR range test ({rule}) against the measured edge"))
    click.echo(rangetest.summary(comparison))
    click.echo(f"wrote {out / LRFIND_FILE}")


def _recorded(study_dir: str):
    """The study's trials, or exit 2 naming the directory when there are none."""
    try:
        trials = reports.load_trials(study_dir)
    except reports.ResultsError as exc:
        raise BadInput(str(exc)) from None
    if trials.empty:
        raise BadInput(f"{study_dir}: no runs recorded yet")
    return trials


def _print_lines(heading: str, lines: list[str]) -> None:
    """Plain sentences, each wrapped at the terminal's width with a hanging indent."""
    click.echo(textwrap.fill(heading, console.width))
    for line in lines:
        # "94 %" stays on one line: the number and its unit are one word to the reader.
        text = textwrap.fill(line.replace(" %", "\0%"), console.width, initial_indent="  ", subsequent_indent="      ")
        click.echo(text.replace("\0", " "))


@main.command("map")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--png", is_flag=True, help="Also write the plots under STUDY_DIR/plots/.")
@click.option("--all", "every_setting", is_flag=True,
              help=f"One row per setting however many there are (the default up to {SMALL_STUDY} settings).")
def map_(study_dir: str, png: bool, every_setting: bool) -> None:
    """Print the stability map: the edge learning rate and what lies beyond it, per setting
    (a small study or --all) or pivoted over the two axes that move it most."""
    from .answers import conditions, effects
    from .results import maps

    trials = _recorded(study_dir)
    map_df, boundary = maps.build(trials)
    lrs = _grid_learning_rates(study_dir) or sorted(map_df["learning_rate"].unique())
    title = (f"{study_dir}: {trials['example'].iloc[0]}, {len(boundary)} settings, {len(trials)} runs, "
             f"{len(lrs)} learning rates")
    effects_df = effects.effects(map_df, boundary)
    if every_setting or len(boundary) <= SMALL_STUDY:
        console.print(map_table(map_df, boundary, lrs, title))
        _print_lines("What each value does to the edge (sweep effects):", effects.lines(effects_df))
    else:
        axes = pivot_axes(boundary, top_axes(effects_df, boundary))
        _print_lines(f"The axes that move the edge most: {' and '.join(axes)} (sweep effects):",
                     [effects.strongest(effects_df, a) for a in axes])
        console.print(pivot_table(map_df, boundary, lrs, axes, title))
        click.echo(textwrap.fill(f"Every one of the {len(boundary)} settings: sweep map {study_dir} --all "
                                 "(and boundary.parquet).", console.width))
    _print_lines("Where each failure occurs:", conditions.lines(conditions.conditions(trials)))
    if png:
        from .plots.figures import write_plots

        for path in write_plots(study_dir):
            click.echo(f"wrote {path}")


@main.command("effects")
@click.argument("study_dir", type=click.Path(file_okay=False))
def effects_(study_dir: str) -> None:
    """What each axis value does to the edge, and where each failure occurs; writes
    effects.parquet and conditions.parquet in STUDY_DIR."""
    from .answers import conditions, effects
    from .results import maps

    trials = _recorded(study_dir)
    map_df, boundary = maps.build(trials)
    try:
        effects_df = effects.write(study_dir, map_df, boundary)
        conditions_df = conditions.write(study_dir, trials)
    except OSError as exc:  # a read-only or full results directory: a line, not a traceback (exit 1)
        raise click.ClickException(f"{study_dir}: cannot write the answers: {exc.strerror or exc}") from None
    _print_lines(f"What each value does to the edge against its axis's reference, over {len(boundary)} "
                 "settings, largest move first:", effects.lines(effects_df))
    _print_lines("Where each failure occurs:", conditions.lines(conditions_df))
    for name in (effects.EFFECTS_FILE, conditions.CONDITIONS_FILE):
        click.echo(f"wrote {Path(study_dir) / name}")


def _grid_learning_rates(study_dir: str) -> list[float] | None:
    """The study file's learning-rate grid (a boundary study runs only some of it), if stored."""
    import json

    from .spec import parse

    try:
        meta = json.loads((Path(study_dir) / "study.json").read_text())
        return sorted(parse(meta["study_toml"], import_builder=False).grid["learning_rate"])
    except Exception:  # an older or hand-made directory: the map's own learning rates serve
        return None


if __name__ == "__main__":
    sys.exit(main())
