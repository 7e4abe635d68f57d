"""A sweep's results, rebuilt from its sub-workdirs at any time, also while it runs: runs.csv
(one row per entry, unfinished and missing ones marked), results.csv and results.md (per
variant: finished seeds, mean and standard deviation over them of the final metrics, and the
difference to the control arm paired by seed with a 95% Student-t interval) and the plots.

A run is finished when its summary.json exists (every mode writes it last). Its final metrics:
validation CE and perplexity of the parameters it reports (train: the best; selftrain: the last
round's), the weighted training loss and unweighted training CE of its last logged steps, every
dict-valued entry of summary.json (train and finetune: the evaluators' results, e.g.
exact_match/5; finetune also before/... and feedback/...) or the last round's greedy test
and validation exact match (selftrain: test_exact/5, val_exact), steps, wall time and the median
logged tokens/s.
"""
import csv
import io
import json
import math
import os
from typing import NamedTuple

import jax
import numpy as np
from scipy import stats

from selffb import metrics as metrics_lib
from selffb import runtime
from selffb.sweep import markdown
from selffb.sweep import plots

HEAD = {'train': ('val_ce', 'val_ppl', 'train_loss', 'train_ce'),
        'finetune': ('val_ce', 'val_ppl', 'train_loss', 'train_ce'),
        'selftrain': ('val_exact', 'val_ce', 'val_ppl', 'train_loss', 'train_ce', 'rounds')}
TAIL = ('steps', 'wall_s', 'tokens_per_s')


class Difference(NamedTuple):
  mean: float
  low: float  # The confidence interval; NaN below 2 pairs.
  high: float
  n: int  # Seeds both arms finished.


def paired_difference(a, b, confidence=0.95):
  """a - b over the seeds both have ({seed: value} each): the mean difference and its Student-t
  confidence interval, mean -+ t_{(1+confidence)/2, n-1} * sd / sqrt(n)."""
  seeds = sorted(set(a) & set(b))
  d = np.array([a[s] - b[s] for s in seeds], np.float64)
  d = d[np.isfinite(d)]
  if not len(d):
    return Difference(math.nan, math.nan, math.nan, 0)
  mean = float(d.mean())
  if len(d) < 2:
    return Difference(mean, math.nan, math.nan, 1)
  half = float(stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
  return Difference(mean, mean - half, mean + half, len(d))


def mean_std(values):
  """Mean and sample standard deviation (NaN where undefined)."""
  v = np.array(values, np.float64)
  v = v[np.isfinite(v)]  # A diverged seed's inf or NaN would hide the others: left out.
  return (float(v.mean()) if len(v) else math.nan,
          float(v.std(ddof=1)) if len(v) > 1 else math.nan)


def finished(directory):
  return os.path.exists(os.path.join(directory, 'summary.json'))


def read_rows(path):
  """metrics.jsonl's rows; a line a running process is still writing is left out."""
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except ValueError:
          pass
  return rows


def _last(rows, key):
  values = [r[key] for r in rows if key in r]
  return values[-1] if values else None


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _train_side(rows, every_rows):
  """Metrics of the last logged training steps and the run's median tokens/s."""
  rates = [r['train/tokens_per_s'] for r in every_rows if 'train/tokens_per_s' in r]
  return {'train_loss': _last(rows, 'train/loss'), 'train_ce': _last(rows, 'train/ce'),
          'tokens_per_s': float(np.median(rates)) if rates else None}


def train_metrics(directory, last=False):
  """A train run's metrics; `last` (finetune, which reports its last parameters): the last
  validation CE rather than the best."""
  summary = _read_json(os.path.join(directory, 'summary.json'))
  rows = read_rows(os.path.join(directory, 'metrics.jsonl'))
  ce = _last(rows, 'val/ce') if last else summary['best_val_ce']
  found = {'val_ce': ce, 'val_ppl': float(np.exp(ce)), **_train_side(rows, rows),
           'steps': summary['steps'], 'wall_s': summary['wall_s']}
  for name, result in summary.items():  # Dict-valued entries are the evaluators' results.
    if isinstance(result, dict):
      found.update(metrics_lib.flatten(result, '/', f'{name}/'))
  return found


def round_dirs(directory):
  """The self arm's round directories, in order: [(round, path)]."""
  root = os.path.join(directory, 'rounds')
  names = os.listdir(root) if os.path.isdir(root) else []
  return sorted((int(n[1:]), os.path.join(root, n)) for n in names if n[1:].isdigit())


def self_rounds(directory):
  """The finished self rounds' rows (their report.json), in order."""
  return [_read_json(os.path.join(d, 'report.json')) for _, d in round_dirs(directory)
          if os.path.exists(os.path.join(d, 'report.json'))]


def shared_round0(directory):
  """The round-0 directory a self-training run started from (its selftrain.init_workdir) when
  that is another run's finished round 0 (a sweep's share_round0), else None: its training
  steps, time and curve count for this run too, so variants compare at equal cost."""
  path = os.path.join(directory, 'config.json')
  init = _read_json(path).get('selftrain', {}).get('init_workdir') if os.path.exists(path) else ''
  return init if init and os.path.exists(os.path.join(init, 'report.json')) else None


def selftrain_metrics(directory):
  summary = _read_json(os.path.join(directory, 'summary.json'))
  final, base = summary['final'], shared_round0(directory)
  base_row = _read_json(os.path.join(base, 'report.json')) if base else {}
  rows = read_rows(os.path.join(directory, 'rounds', f"r{final['round']:02d}", 'metrics.jsonl'))
  every = [r for _, d in round_dirs(directory)
           for r in read_rows(os.path.join(d, 'metrics.jsonl'))]
  ce = _last(rows, 'val/ce')
  return {'val_exact': final['val_exact'], 'val_ce': ce,
          'val_ppl': None if ce is None else float(np.exp(ce)), **_train_side(rows, every),
          'rounds': summary['rounds'], **{f'test_exact/{k}': v for k, v in final['test'].items()},
          'steps': sum(r['steps'] for r in self_rounds(directory)) + base_row.get('steps', 0),
          'wall_s': summary['wall_s'] + base_row.get('wall_s', 0.0)}


def val_curve(directory, mode):
  """[(step, validation CE)] of a run, finished or not; a self-training run's rounds follow
  each other, each round's steps after the last."""
  if mode != 'selftrain':
    dirs = [directory]
  else:
    base = shared_round0(directory)
    dirs = [base if r == 0 and base else d for r, d in round_dirs(directory)]
  points, offset = [], 0
  for d in dirs:
    rows = read_rows(os.path.join(d, 'metrics.jsonl'))
    points += [(offset + r['step'], r['val/ce']) for r in rows if 'val/ce' in r]
    offset += max((r['step'] for r in rows), default=0)
  return points


def _progress(directory, mode):
  if mode != 'selftrain':
    rows = read_rows(os.path.join(directory, 'metrics.jsonl'))
    return f"step {max((r['step'] for r in rows), default=0)}"
  return f'{len(self_rounds(directory))} round(s) done'


def collect(layout, workdir):
  """One dict per entry: index, variant, seed, workdir, status ('finished', 'unfinished' or
  'not started'), progress, metrics (finished runs), curve, rounds (selftrain)."""
  mode, runs = layout['mode'], []
  for e in layout['entries']:
    d = os.path.join(workdir, e['workdir'])
    run = {k: e[k] for k in ('index', 'variant', 'seed', 'workdir')}
    run['status'] = ('finished' if finished(d) else 'unfinished' if os.path.isdir(d)
                     else 'not started')
    run['progress'] = _progress(d, mode) if run['status'] == 'unfinished' else ''
    run['metrics'] = {}
    if run['status'] == 'finished':
      run['metrics'] = (selftrain_metrics(d) if mode == 'selftrain'
                        else train_metrics(d, last=mode == 'finetune'))
    run['curve'] = val_curve(d, mode)
    run['rounds'] = self_rounds(d) if mode == 'selftrain' else []
    runs.append(run)
  return runs


def _natural(key):
  return tuple((0, int(p), '') if p.isdigit() else (1, 0, p) for p in key.split('/'))


def columns(mode, runs):
  """The metric columns the finished runs have: the mode's head, evaluator columns, the tail."""
  keys = {k for r in runs for k in r['metrics']}
  head = [k for k in HEAD[mode] if k in keys]
  tail = [k for k in TAIL if k in keys]
  return head + sorted(keys - set(head) - set(tail), key=_natural) + tail


def diff_columns(cols):
  """The columns compared with the control: validation CE and exact match, the evaluators'."""
  return [c for c in cols if c in ('val_ce', 'val_exact') or '/' in c]


def summarize(layout, runs, cols):
  """One row per variant: seeds, mean and std of each column, the paired difference to the
  control of each diff column."""
  control, out = layout['control'], []
  done = {v: {r['seed']: r['metrics'] for r in runs if r['variant'] == v
              and r['status'] == 'finished'} for v in layout['variants']}
  for v, by_seed in done.items():
    row = {'variant': v, 'control': v == control, 'seeds_finished': len(by_seed),
           'seeds': len(layout['seeds'])}
    for c in cols:
      row[f'{c}_mean'], row[f'{c}_std'] = mean_std(
          [m[c] for m in by_seed.values() if m.get(c) is not None])
    if control is not None and v != control:
      row['paired_seeds'] = len(set(by_seed) & set(done[control]))
      for c in diff_columns(cols):
        pick = lambda d, c=c: {s: m[c] for s, m in d.items() if m.get(c) is not None}
        d = paired_difference(pick(by_seed), pick(done[control]))
        row[f'{c}_diff'], row[f'{c}_lo'], row[f'{c}_hi'] = d.mean, d.low, d.high
    out.append(row)
  return out


ROUND_KEYS = ('kept', 'label_precision', 'candidate_accuracy')


def round_summary(layout, runs):
  """Self-training sweeps: (rows, columns). One row per variant and round over the finished
  seeds, with the mean and std of each column: the kept count, the kept labels' precision, the
  candidates' accuracy and the test exact match per length (test_exact/<n>)."""
  out, tests = [], set()
  for v in layout['variants']:
    done = [r['rounds'] for r in runs if r['variant'] == v and r['status'] == 'finished']
    for i in range(max((len(rounds) for rounds in done), default=0)):
      at = [rounds[i] for rounds in done if len(rounds) > i]
      digits = at[0].get('digits')  # Round 0's is the training range, a string: left blank.
      row = {'variant': v, 'round': i, 'seeds': len(at),
             'digits': digits if isinstance(digits, int) else ''}
      values = {k: [a.get(k) for a in at] for k in ROUND_KEYS}
      values.update({f'test_exact/{n}': [a['test'].get(n) for a in at] for n in at[0]['test']})
      tests |= set(values) - set(ROUND_KEYS)
      for k, vs in values.items():
        row[f'{k}_mean'], row[f'{k}_std'] = mean_std([x for x in vs if x is not None])
      out.append(row)
  return out, list(ROUND_KEYS) + sorted(tests, key=_natural)


def _csv(fields, rows):
  table = io.StringIO(newline='')
  writer = csv.DictWriter(table, fields, extrasaction='ignore')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: '' if v is None or (isinstance(v, float) and math.isnan(v)) else v
                     for k, v in row.items()})
  return table.getvalue()


def result_fields(cols, control):
  fields = ['variant', 'control', 'seeds_finished', 'seeds']
  fields += [f'{c}_{s}' for c in cols for s in ('mean', 'std')]
  if control is not None:
    fields += ['paired_seeds'] + [f'{c}_{s}' for c in diff_columns(cols)
                                  for s in ('diff', 'lo', 'hi')]
  return fields


def run_fields(cols):
  return ['index', 'variant', 'seed', 'status', 'progress', 'workdir'] + cols


def write(layout, workdir):
  """runs.csv, results.csv, results.md and the plots in workdir (process 0); returns the
  markdown."""
  runs = collect(layout, workdir)
  cols = columns(layout['mode'], runs)
  rows = summarize(layout, runs, cols)
  by_round, round_cols = round_summary(layout, runs) if layout['mode'] == 'selftrain' else ([], [])
  text = markdown.render(layout, runs, rows, cols, diff_columns(cols), by_round, round_cols)
  if jax.process_index() == 0:
    runtime.write_text(os.path.join(workdir, 'runs.csv'),
                       _csv(run_fields(cols), [{**r, **r['metrics']} for r in runs]))
    runtime.write_text(os.path.join(workdir, 'results.csv'),
                       _csv(result_fields(cols, layout['control']), rows))
    runtime.write_text(os.path.join(workdir, 'results.md'), text)
    if by_round:
      fields = ['variant', 'round', 'digits', 'seeds'] + [f'{c}_{s}' for c in round_cols
                                                          for s in ('mean', 'std')]
      runtime.write_text(os.path.join(workdir, 'rounds.csv'), _csv(fields, by_round))
    plots.write(layout, workdir, runs, cols)
  return text
