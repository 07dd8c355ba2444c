"""One row per training run: the MLflow record (``docs/mlflow_schema.md``) turned into a typed ``pandas.DataFrame``.

Params are strings in MLflow and are cast back here; a run that died before logging them keeps its row with empty
cells, so a partial sweep shows every run with its status.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
from tqdm.auto import tqdm

from .store import metric_history

__all__ = ['COLUMNS', 'TOP1', 'runs_frame', 'series_label', 'FAMILY_ORDER', 'REMEDY_ORDER', 'COLLAPSE', 'STAGES',
           'COLLAPSE_COLUMNS', 'REPRESENTATION', 'LR_PARAMS']

from deepvit.schema import (COLLAPSE_PREFIX, CORRECT_ORDER_TAG, FAMILY_TAG, HOLDOUT_TOP1,  # noqa: E402
                            PLANNED_PFLOP_PARAM, REMEDY_TAG, SWEEP_ID_TAG, SWEEP_POINT_TAG, TOP1,
                            TRAIN_EVAL_TOP1)  # (the record's names)
FAMILY_ORDER = ('vit', 'deepvit')
# series order in tables and figures: the baseline, the paper's remedy, its ablations, the other remedies
REMEDY_ORDER = ('vit', 'deepvit', 'reattn', 'reattn_ln', 'reattn_nonorm', 'reattn_identity', 'bn_only', 'layerscale',
                'talkinghead', 'depthscale')

# the params that carry a run's learning rate (the rate used first, see 'lr' below): never a series label when the
# analysis selects the learning rate (analysis.lr_selection)
LR_PARAMS = ('train.scaled_lr', 'train.lr', 'train.base_lr')
# column -> (source, key, dtype); source 'param' | 'tag' | 'metric'
_FIELDS = {
    # the architecture the run really had (``model.resolved.*``), else the override that was asked for
    'depth': ('param', ('model.resolved.depth', 'model.depth'), 'Int64'),
    'embed_dim': ('param', ('model.resolved.embed_dim', 'model.embed_dim'), 'Int64'),
    'num_heads': ('param', ('model.resolved.num_heads', 'model.num_heads'), 'Int64'),
    'seed': ('param', 'train.seed', 'Int64'),
    'params': ('param', 'model.params', 'Int64'),
    'gmacs': ('param', 'model.gmacs', 'Float64'),
    'model': ('param', 'model.name', 'string'),
    'top1_final': ('metric', TOP1, 'Float64'),
    'world_size': ('param', 'world_size', 'Int64'),
    'num_workers': ('param', 'data.num_workers', 'Int64'),
    'data_source': ('param', 'data.source', 'string'),
    'epochs': ('param', 'train.epochs', 'Int64'),
    # the peak learning rate used: ``train.scaled_lr`` in runs recorded before the schema (where ``train.lr`` is the
    # configured base rate), ``train.lr`` since (docs/mlflow_schema.md)
    'lr': ('param', LR_PARAMS, 'Float64'),
    'holdout_top1_final': ('metric', HOLDOUT_TOP1, 'Float64'),   # latest holdout top-1 (%); empty without a holdout
    'train_top1_final': ('metric', TRAIN_EVAL_TOP1, 'Float64'),  # latest train-subset top-1 (%, eval mode)
    'planned_pflop': ('param', PLANNED_PFLOP_PARAM, 'Float64'),  # training compute planned (6 x MACs x images)
    'correct_order': ('tag', CORRECT_ORDER_TAG, 'string'),       # 'sample': eval/correct.npy in sample order
}
# collapse figures of the final probe, for both map stages: column ``<name>_<stage>`` ← metric ``collapse/<name>_<stage>``
# (runs recorded before a measure existed keep empty cells; names in docs/mlflow_schema.md and docs/collapse.md)
COLLAPSE = ('similar_blocks',              # the paper metric's similar-block count (paper Sec. 3.2 rule)
            'calibrated_similar_blocks',   # the same rule on the calibrated (column-wise) similarity
            'calibrated_mean_adjacent',    # mean calibrated similarity of adjacent blocks
            'mean_adjacent_similarity',    # the same for the paper metric
            'effective_keys',              # attention sharpness: exp(row entropy), mean over blocks
            'row_mean_adjacent',           # the headline: row-wise calibrated similarity of adjacent blocks
            'row_deep_adjacent',           # ... over the deepest quarter of the blocks only
            'row_similar_blocks',          # the paper's count on the row-wise measure
            'row_head_avg_mean_adjacent',  # the head-matching-free check
            'row_structure_mean_adjacent',  # the part of the row-wise alignment every image shares (position, sinks)
            'row_content_mean_adjacent',   # row-wise alignment beyond what images share (image null)
            'entropy')                     # normalised attention entropy (0 one-hot, 1 uniform), mean over blocks
STAGES = ('softmax', 'mixed')
# representation measures on the block outputs (no map stage); ``_step0``: the same run's step-0 probe, the
# reference they are read against (the residual stream makes blocks alike at init)
REPRESENTATION = ('token_residual_last', 'token_cosine_last', 'cka_mean_adjacent', 'cka_deep_adjacent')
STEP0 = ('token_residual_last', 'cka_mean_adjacent')
# the headline's 95 % bootstrap interval over probe images: column = metric name ``row_mean_adjacent_<stage>_<lo|hi>``
INTERVALS = [f'row_mean_adjacent_{stage}_{end}' for stage in STAGES for end in ('lo', 'hi')]
COLLAPSE_COLUMNS = [f'{name}_{stage}' for name, stage in itertools.product(COLLAPSE, STAGES)] + INTERVALS \
    + list(REPRESENTATION) + [f'{name}_step0' for name in STEP0]
for _col in COLLAPSE_COLUMNS:
    if not _col.endswith('_step0'):
        _FIELDS[_col] = ('metric', COLLAPSE_PREFIX + _col, 'Float64')

COLUMNS = ['run_id', 'run_name', 'status', 'sweep_id', 'sweep_point', 'family', 'remedy', 'model', 'depth',
           'embed_dim', 'num_heads', 'seed', 'params', 'gmacs', 'world_size', 'num_workers', 'data_source', 'epochs',
           'lr', 'planned_pflop', 'top1_best', 'top1_best_step', 'top1_final', 'holdout_top1_final',
           'train_top1_final', 'last_step', 'correct_order'] + COLLAPSE_COLUMNS + \
          ['series', 'start_time', 'end_time']


def endpoint_columns() -> List[str]:
    """The numeric per-run columns a study plan may name as its endpoint: every metric column and ``top1_best``."""
    return [c for c, (src, _, _) in _FIELDS.items() if src == 'metric'] + ['top1_best']


def series_label(remedy: str, embed_dim, num_heads, extra: Sequence[Tuple[str, object]] = ()) -> str:
    """Label of one curve: the remedy (``vit``, ``reattn``, ``layerscale``, …; the family for runs recorded before
    the ``remedy`` tag) and width, e.g. ``'reattn w64/h4'``, plus ``key=value`` of any grouping params."""
    width = 'w?' if pd.isna(embed_dim) else f'w{embed_dim}/h{num_heads}'
    return ' '.join([str(remedy), width] + [f'{k}={v}' for k, v in extra])


def _cast(value: Optional[str], dtype: str):
    if value is None:
        return None
    try:
        return float(value) if dtype != 'string' else value
    except ValueError:
        return None


def _param(params: Dict[str, str], keys, dtype: str):
    """The first of ``keys`` (a key or a tuple of keys) whose value casts to ``dtype``; ``'None'`` counts as absent."""
    for key in (keys,) if isinstance(keys, str) else keys:
        value = _cast(params.get(key), dtype)
        if value is not None:
            return value
    return None


def _time(ms: Optional[int]) -> Optional[pd.Timestamp]:
    return None if ms is None else pd.Timestamp(ms, unit='ms', tz='UTC')


def runs_frame(client, runs: Sequence, group_by: Sequence[str] = (),
               progress: bool = True) -> Tuple[pd.DataFrame, Dict[str, List[Tuple[int, float]]]]:
    """Table of ``runs`` and their ``val/top1`` curves.

    Args:
        client: the ``MlflowClient`` the runs came from (for metric histories).
        runs: MLflow training runs (see :func:`analysis.store.sweep_runs`).
        group_by: extra params (dotted keys, e.g. ``model.drop_path_rate``) that split series beyond family and
            width; each becomes a column named by the key.
    Returns:
        ``(frame, curves)``: ``frame`` has :data:`COLUMNS` (+ ``group_by``), one row per run; ``top1_best`` is the
        maximum of the ``val/top1`` history, ``top1_final`` its latest value, both in percent. ``curves`` maps a
        run id to its ``[(step, val/top1), ...]``.
    """
    rows, curves = [], {}
    for run in tqdm(runs, desc='runs', unit='run', disable=not progress):
        p, t, m = run.data.params, run.data.tags, run.data.metrics
        row = {'run_id': run.info.run_id, 'run_name': run.info.run_name, 'status': run.info.status,
               'sweep_id': t.get(SWEEP_ID_TAG), 'sweep_point': t.get(SWEEP_POINT_TAG),
               'family': t.get(FAMILY_TAG) or p.get('model.family'),
               'remedy': t.get(REMEDY_TAG) or p.get('model.remedy') or t.get(FAMILY_TAG) or p.get('model.family'),
               'start_time': _time(run.info.start_time), 'end_time': _time(run.info.end_time)}
        for col, (src, key, dtype) in _FIELDS.items():
            row[col] = _param(p, key, dtype) if src == 'param' else t.get(key) if src == 'tag' else m.get(key)
        for key in group_by:
            row[key] = p.get(key)
        for name in STEP0:   # the first probe's value (step 0), only for runs that logged the measure
            history = metric_history(client, run.info.run_id, COLLAPSE_PREFIX + name) if COLLAPSE_PREFIX + name in m \
                else []
            row[f'{name}_step0'] = history[0][1] if history and history[0][0] == 0 else None
        curve = metric_history(client, run.info.run_id, TOP1) if TOP1 in m else []
        curves[run.info.run_id] = curve
        best = max(curve, key=lambda sv: sv[1]) if curve else (None, None)
        row['top1_best_step'], row['top1_best'] = best
        row['last_step'] = curve[-1][0] if curve else None
        rows.append(row)
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != 'series'] + list(group_by))
    for col, (_, _, dtype) in _FIELDS.items():
        df[col] = df[col].astype(dtype)
    df['top1_best'] = df['top1_best'].astype('Float64')
    df[['top1_best_step', 'last_step']] = df[['top1_best_step', 'last_step']].astype('Int64')
    df[[f'{name}_step0' for name in STEP0]] = df[[f'{name}_step0' for name in STEP0]].astype('Float64')
    df['family'] = df['family'].fillna('unknown')
    df['remedy'] = df['remedy'].fillna(df['family'])
    df['series'] = [series_label(r['remedy'], r['embed_dim'], r['num_heads'], [(k, r[k]) for k in group_by])
                    for _, r in df.iterrows()]
    rank = {f: i for i, f in enumerate(REMEDY_ORDER)}
    df['_rank'] = df['remedy'].map(lambda f: rank.get(f, len(rank)))
    df = df.sort_values(['_rank', 'remedy', 'embed_dim', 'num_heads', 'depth', 'seed'], kind='stable')
    return df[COLUMNS + list(group_by)].reset_index(drop=True), curves
