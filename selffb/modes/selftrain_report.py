"""The self-training report: rounds.csv, rounds.md and accuracy.png, one row per round."""
import csv
import io
import os

import jax

from selffb import runtime


_LEGEND = ('Greedy exact match (%) on held-out test problems per operand length (1d, 2d, ...) '
           'after each round; before/after: at the digits the round prompted. label_precision: '
           'share of kept samples that are correct (exact check, whatever the filter). '
           'candidate_accuracy: share of all sampled candidates that are correct. consistency '
           "(when weighted): mean share of a candidate's equivalent prompts answered alike.\n\n")


def pct(x):
  return '-' if x is None else f'{100 * x:.1f}%'


def _columns(rows):
  lengths = sorted({int(k) for row in rows for k in row['test']})
  return ['run', 'round', 'digits', 'prompts', 'generated', 'kept', 'label_precision',
          'candidate_accuracy', 'before', 'after', 'steps', 'val_exact'] + [
              f'acc_{n}' for n in lengths] + ['wall_s'] + (
                  ['consistency'] if any('consistency' in row for row in rows) else [])


def _flat_rows(rows):
  """Rows with acc_<n> columns, and test accuracy at the round's digits before and after it
  (before: the previous round of the same run, round 0 for the first)."""
  out, last = [], {}
  for row in rows:
    flat = dict(row)
    flat.update({f'acc_{k}': v for k, v in row['test'].items()})
    prev = last.get(row['run'], last.get('self'))
    d = str(row['digits'])
    if prev is not None and d in row['test']:
      flat['before'], flat['after'] = prev['test'][d], row['test'][d]
    last[row['run']] = row
    out.append(flat)
  return out


def markdown(rows):
  """The report as a markdown table; test exact match in %, one column per length."""
  cols = _columns(rows)
  head = [c.replace('acc_', '') + ('d' if c.startswith('acc_') else '') for c in cols]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(cols)]
  for flat in _flat_rows(rows):
    cells = []
    for c in cols:
      v = flat.get(c, '')
      if c.startswith('acc_') or c in ('label_precision', 'candidate_accuracy', 'val_exact',
                                       'before', 'after', 'consistency'):
        v = pct(v) if v != '' else ''
      elif c == 'wall_s':
        v = f'{v:.0f}'
      cells.append(str(v))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write(workdir, rows):
  """rounds.csv, rounds.md and accuracy.png (test exact match against digits, a line a round)."""
  if jax.process_index() != 0 or not rows:
    return
  table = io.StringIO(newline='')
  writer = csv.DictWriter(table, _columns(rows), extrasaction='ignore')
  writer.writeheader()
  writer.writerows(_flat_rows(rows))
  runtime.write_text(os.path.join(workdir, 'rounds.csv'), table.getvalue())
  runtime.write_text(os.path.join(workdir, 'rounds.md'), _LEGEND + markdown(rows) + '\n')
  fig = figure(rows)
  fig.savefig(os.path.join(workdir, 'accuracy.png'), dpi=100)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)


def figure(rows):
  """Test exact match against digits, a line a round (and the control's last round)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  low, high = (int(x) for x in str(rows[0]['digits']).split('-'))
  ax.axvspan(low - 0.5, high + 0.5, color='0.9', label='training lengths')
  for row in rows:
    xs = [int(k) for k in row['test']]
    control = row['run'] == 'control'
    if control and row['round'] != max(r['round'] for r in rows if r['run'] == 'control'):
      continue
    ax.plot(xs, [100 * v for v in row['test'].values()], 'k--' if control else '-o',
            label=f"control after {row['round']} rounds" if control else f"round {row['round']}")
  ax.set_xlabel('operand digits')
  ax.set_ylabel('greedy exact match (%)')
  ax.set_title('Held-out test accuracy after each self-training round')
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))  # Outside: covers no line.
  fig.tight_layout()
  return fig
