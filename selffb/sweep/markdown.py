"""results.md: a sweep's tables in markdown, the numbers of results.csv and runs.csv with
fractions (exact match, accuracy) in percent and their differences in percentage points."""
import math

NAMES = {'val_ce': 'val CE', 'val_ppl': 'val ppl', 'train_loss': 'train loss (weighted)',
         'train_ce': 'train CE', 'val_exact': 'val exact', 'rounds': 'rounds', 'steps': 'steps',
         'wall_s': 'wall s', 'tokens_per_s': 'tokens/s'}
_FRACTIONS = ('exact', 'accuracy', 'precision', 'recall', 'f1')
_LEGEND = (
    'Final metrics, mean ± standard deviation over the finished seeds. val CE and ppl: '
    'unweighted, on the validation set, of the parameters the run reports (train: those with '
    'the best validation CE, which the evaluators score; finetune and selftrain: the last). '
    'train loss: '
    "the arm's weighted loss, train CE the unweighted one, over the last logged steps. Exact "
    'match in %, greedy, per test length. wall s: the training time of the session that '
    'finished the run; tokens/s: the median over its logged steps.')


def is_fraction(col):
  return col.split('/')[-1] not in ('ce', 'perplexity', 'loss') and any(
      w in col for w in _FRACTIONS)


def header(col, unit='%'):
  return NAMES.get(col, col.replace('/', ' ')) + (f' ({unit})' if is_fraction(col) else '')


def number(col, v, signed=False):
  """A value of `col` in its unit (fractions in percent), or '-'."""
  if v is None or math.isnan(v):
    return '-'
  sign = '+' if signed else ''
  if is_fraction(col):
    return f'{100 * v:{sign}.1f}'
  if col == 'tokens_per_s':
    return f'{v:{sign},.0f}'
  if col in ('wall_s', 'steps'):
    return f'{v:{sign}.0f}'
  if col == 'rounds':  # A mean over seeds that stopped at different rounds: 1.3, not 1.
    return f'{v:{sign}.1f}'
  if col.endswith('ppl') and not signed:
    return f'{v:.4f}'  # Near 1 for a trained model: 4 significant digits would print '1'.
  return f'{v:{sign}.4g}'  # Significant digits: a weighted loss can be 1e-5 late in training.


def spread(col, mean, std):
  if mean is None or math.isnan(mean):
    return '-'
  return number(col, mean) + ('' if math.isnan(std) else f' ± {number(col, std)}')


def interval(col, mean, low, high):
  if math.isnan(mean):
    return '-'
  if math.isnan(low):
    return number(col, mean, True)
  return f'{number(col, mean, True)} [{number(col, low, True)}, {number(col, high, True)}]'


def table(head, body):
  return (['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)] +
          ['| ' + ' | '.join(row) + ' |' for row in body])


def _means(rows, cols, control):
  body = [[f'{r["variant"]}' + (' (control)' if r['variant'] == control else ''),
           f"{r['seeds_finished']}/{r['seeds']}"] +
          [spread(c, r[f'{c}_mean'], r[f'{c}_std']) for c in cols] for r in rows]
  return table(['variant', 'seeds'] + [header(c) for c in cols], body)


def _differences(rows, diff_cols, control):
  body = [[r['variant'], str(r['paired_seeds'])] +
          [interval(c, r[f'{c}_diff'], r[f'{c}_lo'], r[f'{c}_hi']) for c in diff_cols]
          for r in rows if r['variant'] != control]
  return ['', f'Difference to the control `{control}`, paired by seed: mean [95% confidence '
          'interval, Student t over the paired seeds; none below 2]; fractions in percentage '
          'points.', ''] + table(['variant', 'paired seeds'] +
                                 [header(c, 'pp') for c in diff_cols], body)


def _rounds(by_round, round_cols):
  """Self-training: per variant and round, what was kept and the test exact match."""
  body = [[r['variant'], str(r['round']), str(r['digits']), str(r['seeds'])] +
          [spread(c, r[f'{c}_mean'], r[f'{c}_std']) for c in round_cols] for r in by_round]
  return ['', 'Per round (mean ± std over the finished seeds): kept self-labelled samples, the '
          "kept labels' precision and all candidates' accuracy (exact check, whatever the "
          'filter), greedy test exact match (%) per operand length.', ''] + table(
              ['variant', 'round', 'prompted digits', 'seeds'] +
              [c.split('/')[1] + 'd' if '/' in c else c.replace('_', ' ') for c in round_cols],
              body)


def render(layout, runs, rows, cols, diff_cols, by_round=(), round_cols=()):
  """results.md's text."""
  control, done = layout['control'], sum(r['status'] == 'finished' for r in runs)
  seeds = ', '.join(str(s) for s in layout['seeds'])
  lines = [f"# Sweep `{layout['name']}`", '',
           f"`{layout['config_file']}`, --mode={layout['mode']}: {len(layout['variants'])} "
           f'variants x {len(layout["seeds"])} seeds ({seeds}); {done} of {len(runs)} runs '
           'finished.', '', _LEGEND, ''] + _means(rows, cols, control)
  if control is not None and len(rows) > 1:
    lines += _differences(rows, diff_cols, control)
  if by_round:
    lines += _rounds(by_round, round_cols)
  runs_body = [[str(r['index']), r['variant'], str(r['seed']),
                r['status'] + (f" ({r['progress']})" if r['progress'] else ''),
                f"`{r['workdir']}`"] for r in runs]
  lines += ['', 'Runs:', ''] + table(['#', 'variant', 'seed', 'status', 'workdir'], runs_body)
  return '\n'.join(lines) + '\n'
