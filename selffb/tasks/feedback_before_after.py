"""What a fine-tune on recorded feedback learned, from per-row log-probabilities before and after:
the mean per-token log-probability of each kind of response, the preference accuracy (the share
of pairs whose chosen response is more likely than the rejected one) and the share of
corrections more likely than the responses they replaced. Pure numpy."""
import numpy as np

from selffb.data import pipeline

ORDER = ('rated_high', 'rated_middle', 'rated_low', 'labelled_high', 'labelled_middle',
         'labelled_low', 'correction', 'replaced', 'chosen', 'rejected')
NAMES = {'rated_high': 'rated high (signal > 0.5)', 'rated_middle': 'rated middle (0.5)',
         'rated_low': 'rated low (signal < 0.5)', 'labelled_high': 'labelled good',
         'labelled_middle': 'labelled neutral (0.5)', 'labelled_low': 'labelled bad',
         'correction': 'corrections', 'replaced': 'responses corrected',
         'chosen': 'pairs: chosen', 'rejected': 'pairs: rejected'}


def rows(source, before, after):
  """One dict per live row of `source`'s units: its record's line, id and source, category,
  prompt and response, and its log-probability (summed and per token) before and after.
  `before` and `after` are (logp, tokens) arrays, 2 per unit."""
  out = []
  for i, unit in enumerate(pipeline.read_all(source)):
    for j in range(2):
      if not unit['live'][j]:
        continue
      r, k = unit['rows'][j], 2 * i + j
      n = max(float(before[1][k]), 1.0)
      out.append({'unit': i, 'pair': bool(unit['pair']), **{key: r[key] for key in (
          'line', 'id', 'source', 'category', 'prompt', 'response')},
                  'tokens': int(n), 'logp_before': float(before[0][k]),
                  'logp_after': float(after[0][k])})
  return out


def _share(wins):
  return float(np.mean(wins)) if wins else None


def summarize(table):
  """{'categories': {category: {rows, before, after}} (mean per-token log-probability),
  'preference_accuracy': {pairs, before, after}, 'correction_above_replaced': {count, before,
  after}} of `rows`' output."""
  cats = {}
  for c in ORDER:
    got = [r for r in table if r['category'] == c]
    if got:
      cats[c] = {'rows': len(got), **{when: float(np.mean([r[f'logp_{when}'] / r['tokens']
                                                           for r in got]))
                                       for when in ('before', 'after')}}
  by_unit = {}
  for r in table:
    by_unit.setdefault(r['unit'], []).append(r)
  pairs = [u for u in by_unit.values() if len(u) == 2 and u[0]['pair']]
  fixes = [u for u in by_unit.values() if len(u) == 2 and not u[0]['pair']
           and (u[0]['category'], u[1]['category']) == ('correction', 'replaced')]
  above = lambda units, when: _share([u[0][f'logp_{when}'] > u[1][f'logp_{when}']
                                      for u in units])
  return {'categories': cats,
          'preference_accuracy': {'pairs': len(pairs), 'before': above(pairs, 'before'),
                                  'after': above(pairs, 'after')},
          'correction_above_replaced': {'count': len(fixes), 'before': above(fixes, 'before'),
                                        'after': above(fixes, 'after')}}


def _pct(x):
  return '-' if x is None else f'{100 * x:.1f}%'


def markdown(split, summary):
  """A split's summary as a markdown section."""
  lines = [f'### {split}', '', '| responses | rows | log p / token before | after | change |',
           '|---|---|---|---|---|']
  for c, m in summary['categories'].items():
    lines.append(f"| {NAMES[c]} | {m['rows']} | {m['before']:.3f} | {m['after']:.3f} | "
                 f"{m['after'] - m['before']:+.3f} |")
  p, f = summary['preference_accuracy'], summary['correction_above_replaced']
  lines += ['', f"Preference accuracy (chosen more likely than rejected), {p['pairs']} pairs: "
            f"{_pct(p['before'])} before, {_pct(p['after'])} after.",
            f"Corrections more likely than the responses they replaced, {f['count']} records: "
            f"{_pct(f['before'])} before, {_pct(f['after'])} after.", '']
  return '\n'.join(lines)
