"""Teacher-forced metrics of whole splits: CE, perplexity, token accuracy and exact match, from
the task's `eval_sums` run by the jitted eval step."""
import fnmatch

import jax
import numpy as np

from selffb import sharding
from selffb.train import step as step_lib


def evaluate(eval_fn, params, batches, mesh, keys):
  """ce, perplexity, token accuracy and exact match of a split's batches (the `keys` of each)."""
  sums = [eval_fn(params, sharding.put_global(mesh, {k: b[k] for k in keys if k in b}))
          for b in batches]
  total = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(sums))
  ce = total['ce'] / max(total['tokens'], 1)
  return {'ce': ce, 'perplexity': float(np.exp(ce)),
          'accuracy': total['correct'] / max(total['tokens'], 1),
          'exact': total['exact'] / max(total['sequences'], 1)}


class Evaluator:
  """config.evals entry of type 'teacher_forced': {split: metrics} for the splits `splits`
  (a glob over split names) matches."""

  def __init__(self, spec, s):
    self.s = s
    self.splits = sorted(fnmatch.filter(s.splits, spec.splits))
    self.eval_fn = step_lib.jit_eval_step(s)

  def run(self, params):
    s = self.s
    return {name: evaluate(self.eval_fn, params, s.task.eval_batches(
        s.splits[name], s.tokenizer, s.config.data.eval_batch_size, s.fmt), s.mesh,
                           s.task.EVAL_KEYS) for name in self.splits}

  def describe(self, result):
    return 'teacher forced' + ''.join(
        f"\n  {name}: ce {m['ce']:.4f} ppl {m['perplexity']:.3f} acc {m['accuracy']:.4f} "
        f"exact {m['exact']:.4f}" for name, m in result.items())
