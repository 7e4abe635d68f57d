"""Metrics to TensorBoard (tensorboardX) and workdir/metrics.jsonl; a no-op off process 0."""
import json
import os

import tensorboardX


def flatten(d, sep='/', prefix=''):
  """A nested dict as {'a<sep>b<sep>c': value}: metric names, or config keys with sep='.'."""
  flat = {}
  for k, v in d.items():
    name = f'{prefix}{k}'
    flat.update(flatten(v, sep, name + sep) if isinstance(v, dict) else {name: v})
  return flat


class MetricWriter:

  def __init__(self, workdir, enabled=True, keep_until=0):
    """Rows past step `keep_until` (the checkpoint a run resumes from) are dropped, so a resumed
    run's metrics.jsonl has neither duplicated nor missing steps."""
    self.enabled = enabled
    if enabled:
      path = os.path.join(workdir, 'metrics.jsonl')
      rows = open(path).read().splitlines() if os.path.exists(path) else []
      with open(path, 'w') as f:
        f.writelines(r + '\n' for r in rows if _step(r) <= keep_until)
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(path, 'a')

  def write(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _step(row):
  """A row's step; a row cut short by a killed process counts as past every checkpoint."""
  try:
    return json.loads(row)['step']
  except (ValueError, KeyError):
    return float('inf')
