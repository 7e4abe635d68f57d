"""A sweep's plots (matplotlib, Agg): val_ce.png, validation CE over steps per variant with a band
over seeds; <group>.png for each per-length result (exact_match.png, test_exact.png), the final
value per variant and length with error bars over seeds; and for self-training sweeps
rounds.png, test exact match per length over the rounds, a panel per variant."""
import collections
import os
import socket

import numpy as np

from selffb.sweep import markdown


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path):
  """Atomically, like the other reports: a reader never sees half a PNG."""
  tmp = f'{path}.{socket.gethostname()}.{os.getpid()}.tmp'  # Jobs may share a filesystem.
  fig.savefig(tmp, format='png', dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def _spread(series):
  """{x: [values over seeds]} -> (xs, means, stds), the std 0 where one seed has x."""
  xs = sorted(series)
  means = np.array([np.mean(series[x]) for x in xs])
  stds = np.array([np.std(series[x], ddof=1) if len(series[x]) > 1 else 0.0 for x in xs])
  return xs, means, stds


def _variants(layout):
  return list(layout['variants'])


def val_ce(plt, layout, runs, path):
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  for variant in _variants(layout):
    series = collections.defaultdict(list)
    for run in runs:
      if run['variant'] == variant:
        for step, ce in run['curve']:
          series[step].append(ce)
    if series:
      xs, means, stds = _spread(series)
      line, = ax.plot(xs, means, '-o', markersize=2, label=variant)
      low = np.maximum(means - stds, means / 10)  # A log axis: the band stops a decade below.
      ax.fill_between(xs, low, means + stds, color=line.get_color(), alpha=0.2)
  ax.set_xlabel('step' + (' (rounds one after another)' if layout['mode'] == 'selftrain' else ''))
  ax.set_ylabel('validation CE (unweighted, log scale)')
  ax.set_yscale('log')  # Trained arms sit near 1e-4, a failed one near 10: both stay readable.
  ax.set_title('Validation CE per variant\n(mean over seeds, band ± 1 standard deviation)',
               fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
  fig.tight_layout()
  _save(plt, fig, path)


def per_length(plt, layout, runs, group, cols, path):
  """Bars: the final value of `group`/<label> per variant and label, error bars over seeds."""
  labels = [c.split('/', 1)[1] for c in cols
            if c.startswith(group + '/') and markdown.is_fraction(c)]
  by_length = all(label.isdigit() for label in labels)
  variants = [v for v in _variants(layout)
              if any(r['variant'] == v and r['metrics'] for r in runs)]
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 3), 4.5))
  width = 0.8 / max(len(variants), 1)
  for i, variant in enumerate(variants):
    values = [[100 * r['metrics'][f'{group}/{label}'] for r in runs
               if r['variant'] == variant and f'{group}/{label}' in r['metrics']]
              for label in labels]
    means = [np.mean(v) if v else np.nan for v in values]
    stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
    ax.bar(np.arange(len(labels)) + (i - (len(variants) - 1) / 2) * width, means, width,
           yerr=stds, capsize=2, label=variant)
  ax.set_xticks(np.arange(len(labels)), labels, **({} if by_length else {
      'rotation': 20, 'ha': 'right'}))
  ax.set_xlabel('test length' if by_length else '')
  ax.set_ylabel(f'{group} (%)')
  ax.set_ylim(0, 105)
  ax.set_title(f"Final {group}{' per test length' if by_length else ''}\n(mean over finished "
               'seeds, error bars ± 1 standard deviation)', fontsize=10)
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
  fig.tight_layout()
  _save(plt, fig, path)


def rounds(plt, layout, runs, path):
  """Test exact match per length over the rounds, a panel per variant (mean over seeds)."""
  variants = _variants(layout)
  ncols = min(len(variants), 3)
  nrows = -(-len(variants) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows), squeeze=False)
  for ax, variant in zip(axes.flat, variants):
    by_length = collections.defaultdict(lambda: collections.defaultdict(list))
    for run in runs:
      if run['variant'] == variant:
        for row in run['rounds']:
          for length, acc in row['test'].items():
            by_length[length][row['round']].append(100 * acc)
    for length in sorted(by_length, key=int):
      xs, means, _ = _spread(by_length[length])
      ax.plot(xs, means, '-o', markersize=3, label=f'{length}d')
    ax.set_title(variant)
    ax.set_xticks(sorted({row['round'] for run in runs for row in run['rounds']}))
    ax.set_xlabel('round')
    ax.set_ylabel('test exact match (%)')
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(variants):]:
    ax.axis('off')
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.suptitle('Greedy test exact match per length after each round (mean over seeds)')
  fig.tight_layout(rect=(0, 0, 1 - 0.9 / (4.5 * ncols), 1))  # Room on the right for the legend.
  fig.legend(handles, labels, fontsize=7, title='length', loc='center right')
  _save(plt, fig, path)


def write(layout, workdir, runs, cols):
  """Every plot the runs so far have data for."""
  plt = _pyplot()
  if any(r['curve'] for r in runs):
    val_ce(plt, layout, runs, os.path.join(workdir, 'val_ce.png'))
  groups = sorted({c.split('/')[0] for c in cols
                   if c.count('/') == 1 and markdown.is_fraction(c)})
  for group in groups:
    per_length(plt, layout, runs, group, cols, os.path.join(workdir, f'{group}.png'))
  if layout['mode'] == 'selftrain' and any(r['rounds'] for r in runs):
    rounds(plt, layout, runs, os.path.join(workdir, 'rounds.png'))
