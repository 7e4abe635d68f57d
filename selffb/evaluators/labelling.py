"""Precision / recall / F1 reports of a labelling task ('classify', 'ner'): the task's
predictions over whole splits, scored on the host by the task's `report` (evaluators/prf.py),
printed as tables; the result (JSON in summary.json) holds every number of the tables and the
task's headline `scores`, which the training loop can select on (config.train.select_metric)."""
import fnmatch

import jax
from jax.experimental import multihost_utils

from selffb import sharding
from selffb.evaluators import prf
from selffb.train import step as step_lib


def predictions(predict_fn, params, batches, mesh, keys):
  """The task's predictions of every batch, whole on every host (as numpy)."""
  out = []
  for b in batches:
    pred = predict_fn(params, sharding.put_global(mesh, {k: b[k] for k in keys if k in b}))
    if jax.process_count() > 1:  # Each host holds its rows' part of the batch.
      pred = multihost_utils.process_allgather(pred, tiled=True)
    out.append(jax.device_get(pred))
  return out


def scorer(s, batches, labels):
  """params -> the task's report of `batches` (a split's); the jitted predict step is built
  once."""
  predict_fn = step_lib.jit_eval_step(s, eval_fn=s.task.predict, name='predict')
  return lambda params: s.task.report(predictions(predict_fn, params, batches, s.mesh,
                                                  s.task.EVAL_KEYS), batches, labels)


class Evaluator:
  """config.evals entry of type 'report': {split: report} for the splits `splits` (a glob)
  matches, of a task with `predict` and `report`."""

  def __init__(self, spec, s):
    self.s = s
    self.splits = sorted(fnmatch.filter(s.splits, spec.splits))

  def run(self, params):
    s = self.s
    return {name: scorer(s, s.task.eval_batches(s.splits[name], s.tokenizer,
                                                s.config.data.eval_batch_size, s.fmt),
                         s.splits[name].labels)(params) for name in self.splits}

  def describe(self, result):
    lines = ['precision / recall / F1']
    for name, r in result.items():
      lines.append(f'{name}: ' + ' '.join(f'{k} {v:.4f}' for k, v in r['scores'].items()))
      if 'entities' in r:
        lines.append(prf.format_table(r['entities'], f'{name}: entities (CoNLL, seqeval)'))
      for key, title in (('tokens', 'first-piece tags'), ('classes', 'classes')):
        if key in r:
          lines.append(prf.format_table(r[key], f'{name}: {title}'))
    return '\n'.join(lines)
