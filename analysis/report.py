"""The whole analysis of one experiment or sweep: MLflow in, ``runs.csv``, ``depth_table.md``, ``saturation.json``,
figures and a ``report.md`` index out."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

from .aggregate import METRICS, depth_stats
from .code_versions import code_versions_markdown, paired_code_versions
from .convergence import DEFAULT_RISING, add_convergence, convergence_histories, rising_cells, rising_markdown
from .figures import (budget_note, plot_collapse_over_training, plot_effective_keys, plot_paired_differences,
                      plot_similar_blocks, plot_top1_vs_compute, plot_top1_vs_depth, plot_top1_vs_gmacs,
                      plot_training_curves)
from .heatmaps import STAGES, load_similarities, plot_similarity_grid
from .profiles import plot_collapse_profiles
from .lr_selection import apply_frozen_choice, check_lr_axis, lr_markdown, plot_lr_grid
from .lr_selection import select_lr as select_lr_table
from .plan import load_plan, plan_markdown, split_point_key
from .records import COLLAPSE, LR_PARAMS, REPRESENTATION, runs_frame
from .saturation import DEFAULT_THRESHOLD, saturation_report
from .store import get_experiment, metric_history, open_store, sweep_runs
from .stats import from_runs_frame
from .study import load_correct, statistics_markdown, study_statistics
from .table import depth_table

GRIDS = ('paper', 'row')   # heatmap grids drawn: the paper's metric and the headline (runs keep every matrix)
TRAJECTORY = 'row_mean_adjacent'   # the collapse figure drawn over training by default: the headline measure
# every measure that can be drawn over training: per map stage, or (representation) one per run
COLLAPSE_MEASURES = COLLAPSE + REPRESENTATION

__all__ = ['analyze', 'COLLAPSE_MEASURES', 'check_collapse_measure']


def check_collapse_measure(measure: str) -> None:
    """Raise ValueError naming ``measure`` and the known ones unless it is in :data:`COLLAPSE_MEASURES`."""
    if measure not in COLLAPSE_MEASURES:
        raise ValueError(f"collapse measure {measure!r} is not one the analysis knows; choose one of "
                         f"{', '.join(COLLAPSE_MEASURES)}")


def _code_versions(runs, train_runs, baseline: str) -> List[str]:
    """The report's lines on whether each seed-paired cell's two runs ran on one commit (per learning rate when the
    runs have an lr axis: the pairing is within one rate)."""
    tags = {r.info.run_id: dict(r.data.tags) for r in train_runs}
    paired = from_runs_frame(runs)
    paired['lr'] = runs.set_index('run_id').loc[paired['run_id'], 'lr'].to_numpy()
    groups = [g.drop(columns='lr') for _, g in paired.groupby('lr', dropna=False)] if paired['lr'].nunique() > 1 \
        else [paired.drop(columns='lr')]
    cells = [paired_code_versions(g, tags, baseline) for g in groups if not g.duplicated(['series', 'depth',
                                                                                         'seed']).any()]
    if len(cells) < len(groups):
        return ['Not checked: more than one finished run per series, depth and seed (pass --sweep to pick one).']
    return code_versions_markdown(pd.concat(cells, ignore_index=True) if cells else pd.DataFrame())


def _report_md(title: str, table: str, saturation: Dict, figures: List[Path], out: Path,
               statistics: List[str], extra: List[str]) -> str:
    lines = [f'# Analysis: {title}', '', '## Depth table', '', table.split('\n', 2)[2].strip(), '',
             '## Saturation', '', f'Threshold {saturation["threshold_pp"]} points of top-1; method: '
             f'{saturation["method"]}.', '', '| series | saturation depth | best depth | note |', '|---|---:|---:|---|']
    for s in saturation['series']:
        lines.append(f'| {s["series"]} | {s["saturation_depth"] if s["saturation_depth"] is not None else "null"} '
                     f'| {s["best_depth"]} | {s["note"] or ""} |')
    lines += [''] + extra + [''] + statistics + ['', '## Figures', '']
    lines += [f'![{p.stem}]({p.relative_to(out).as_posix()})' for p in figures if p.suffix == '.png']
    return '\n'.join(lines) + '\n'


def analyze(experiment: str, out: Path, sweep: Optional[str] = None, tracking_uri: Optional[str] = None,
            threshold: float = DEFAULT_THRESHOLD, metric: str = 'final', group_by: Sequence[str] = (),
            progress: bool = True, baseline: Optional[str] = None, n_boot: int = 2000,
            collapse_measure: str = TRAJECTORY, rising_threshold: float = DEFAULT_RISING,
            select_lr: bool = False, plan: Optional[str] = None,
            lr_choice: Optional[Path] = None) -> Dict[str, object]:
    """Read the runs of ``experiment`` (only those of ``sweep`` when given) and write the study's outputs to ``out``.

    Args:
        experiment: MLflow experiment name (``--experiment`` of training and of the sweep).
        out: output folder (created).
        sweep: a sweep id (tag ``sweep_id``); all training runs of the experiment when None.
        tracking_uri: default :func:`analysis.store.default_tracking_uri`.
        threshold: saturation threshold in top-1 percentage points (see :mod:`analysis.saturation`).
        metric: ``'final'`` (primary) or ``'best'`` (optimistic) val/top1 of each run, for the table, curves and
            saturation; the paired statistics always use the final value.
        baseline: the series the others are compared with (default: the ViT series, ``'vit w<E>/h<H>'``).
        n_boot: bootstrap replicates of the statistics.
        group_by: extra params (e.g. ``model.drop_path_rate``) that split series beyond family and width.
        collapse_measure: the collapse summary drawn over training (default the headline ``row_mean_adjacent``;
            any of :data:`COLLAPSE_MEASURES`).
        rising_threshold: a run whose top-1 gained at least this many points over its last 25 % of training is
            still rising (:mod:`analysis.convergence`; default 1, issue 23's plateau criterion).
        select_lr: pick each series × depth's learning rate by holdout accuracy (:mod:`analysis.lr_selection`):
            writes ``lr_selection.csv``, ``figures/lr_grid`` and a report section with the test result of the choice.
        plan: a study plan file (:mod:`analysis.plan`): the report lists each planned item, whether the data met it
            and every deviation.
        lr_choice: a staged study's frozen lr choice (``launch/study.py``'s ``lr_selection.json``): the grid runs
            at rates it did not choose leave every table, figure and statistic except the lr selection's own.
    Returns:
        ``{'runs': DataFrame (runs.csv), 'stats': DataFrame (per series and depth), 'saturation': dict,
        'files': [Path, ...] (everything written), 'parents': [sweep parent run ids], 'tracking_uri': str,
        'lr_selection': DataFrame or None}``. ``runs.csv`` has each run's ``top1_gain_last25`` and ``still_rising``.
    Writes:
        ``runs.csv``, ``depth_table.md``, ``saturation.json``, ``report.md`` and under ``figures/``:
        ``top1_vs_depth``, ``top1_vs_gmacs``, ``top1_vs_compute`` (runs that recorded their planned compute),
        ``similar_blocks_vs_depth``, ``similarity_{softmax,mixed}``,
        ``curves_<family>``, ``row_{softmax,mixed}``, ``collapse_profiles``, ``collapse_over_training``
        (each ``.png`` and ``.svg``).
    Raises:
        analysis.store.AnalysisError: no store, experiment, sweep or training run to analyse.
        ValueError: a bad ``metric``, ``threshold``, ``rising_threshold``, ``collapse_measure`` or ``plan``, or ``select_lr``
            with a learning-rate param in ``group_by`` (before the store is opened); ``select_lr`` on runs without an
            lr axis or without ``holdout/top1`` (before anything is written).
    """
    check_collapse_measure(collapse_measure)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 percentage points, got {threshold!r}")
    if not (isinstance(rising_threshold, (int, float)) and rising_threshold > 0):
        raise ValueError(f"still-rising threshold must be > 0 top-1 points, got {rising_threshold!r}")
    lr_keys = [k for k in group_by if k in LR_PARAMS]
    if select_lr and lr_keys:
        raise ValueError(f"--select-lr selects over the learning rate, so series cannot be split by it: drop "
                         f"{', '.join(lr_keys)} from group_by")
    study_plan = load_plan(plan) if plan else None   # a PlanError is a ValueError: before the store is opened
    client, uri = open_store(tracking_uri)
    exp = get_experiment(client, experiment)
    train, parents = sweep_runs(client, exp, sweep)
    runs, curves = runs_frame(client, train, group_by=group_by, progress=progress)
    if select_lr:
        check_lr_axis(runs)      # before any output
    all_runs, lr_dropped = runs, []
    if lr_choice is not None:
        runs, lr_dropped = apply_frozen_choice(runs, lr_choice)
    converge_metric, histories = convergence_histories(client, runs, curves)
    runs = add_convergence(runs, histories, rising_threshold)
    stats = depth_stats(runs, metric)
    saturation = saturation_report(stats, threshold, metric)

    sweeps = sorted(runs['sweep_id'].dropna().unique())
    title = f'experiment `{experiment}`' + (f', sweep `{sweep}`' if sweep else '')
    note = None
    if not sweep and len(sweeps) > 1:
        note = f'Note: this experiment mixes {len(sweeps)} sweeps ({", ".join(sweeps)}); pass --sweep to pick one.'
    out.mkdir(parents=True, exist_ok=True)
    files = [out / 'runs.csv', out / 'depth_table.md', out / 'saturation.json']
    runs.to_csv(files[0], index=False)
    table = depth_table(stats, f'ViT vs DeepViT by depth: {title}', metric, note, converge_metric, rising_threshold)
    files[1].write_text(table)
    files[2].write_text(json.dumps({'experiment': experiment, 'sweep': sweep, **saturation}, indent=2) + '\n')

    fig_dir = out / 'figures'
    metric_col = METRICS[metric]
    figures = plot_top1_vs_depth(stats, runs, saturation, metric_col, fig_dir)
    figures += plot_top1_vs_gmacs(stats, fig_dir)
    figures += plot_top1_vs_compute(stats, fig_dir)
    figures += plot_similar_blocks(stats, fig_dir)
    figures += plot_effective_keys(stats, fig_dir)
    for variant in GRIDS:
        matrices = load_similarities(client, runs, progress=progress, variant=variant)
        for stage in STAGES:
            figures += plot_similarity_grid(runs, matrices, stage, fig_dir, variant=variant)
        if variant == 'row':
            figures += plot_collapse_profiles(runs, matrices, fig_dir)
    stages = ('',) if collapse_measure in REPRESENTATION else STAGES
    histories = {(r, st): metric_history(client, r, f'collapse/{collapse_measure}' + (f'_{st}' if st else ''))
                 for r, st in itertools.product(runs['run_id'], stages)}
    figures += plot_collapse_over_training(
        runs, histories, collapse_measure, fig_dir, stages,
        'read against step 0' if collapse_measure in REPRESENTATION else '0 = chance, 1 = identical maps')
    figures += plot_training_curves(runs, curves, fig_dir)
    if baseline is None:
        vit = [s for s in dict.fromkeys(runs['series']) if s.split(' ')[0] == 'vit']
        baseline = vit[0] if vit else None
    extra = [budget_note(runs), ''] + rising_markdown(rising_cells(runs), converge_metric, rising_threshold)
    if lr_choice is not None:
        extra += ['', f'Learning rates: the frozen choice `{Path(lr_choice).name}` keeps each grid cell\'s chosen '
                      f'rate; {len(lr_dropped)} grid sweeps at the other rates are left out of every table, figure '
                      f'and statistic but the lr selection.']
    lr_table = None
    if select_lr:
        lr_table = select_lr_table(all_runs)    # every rate tried (the grid), whatever --lr-choice keeps
        figures += plot_lr_grid(lr_table, fig_dir)
        lr_table.to_csv(out / 'lr_selection.csv', index=False)
        files.append(out / 'lr_selection.csv')
        extra += [''] + lr_markdown(lr_table, threshold)
    statistics: List[str] = []
    if baseline is not None:
        result = study_statistics(runs, load_correct(client, runs, progress=progress), baseline, n_boot=n_boot,
                                  threshold=threshold)
        if len(result.differences):
            figures += plot_paired_differences(result.differences, baseline, fig_dir)
            result.differences.to_csv(out / 'differences.csv', index=False)
            files.append(out / 'differences.csv')
        statistics = statistics_markdown(result)
        statistics += ['', '### Code versions of the pairs', ''] + _code_versions(runs, train, baseline)
    if study_plan is not None:
        cells = {k[1] for k in map(split_point_key, runs['sweep_point'].dropna()) if k is not None}
        extra = plan_markdown(study_plan, runs, sorted(cells)) + extra
    (out / 'report.md').write_text(_report_md(title, table, saturation, figures, out, statistics, extra))
    return {'runs': runs, 'stats': stats, 'saturation': saturation,
            'files': files + [out / 'report.md'] + figures, 'parents': [p.info.run_id for p in parents],
            'tracking_uri': uri, 'lr_selection': lr_table}
