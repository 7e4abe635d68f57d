"""The engine's own validation: teacher-forced CE, perplexity, token accuracy and exact match of
a split's batches (and bits per byte where the task sums 'bytes'), from the task's `eval_sums`
run by the jitted eval step."""
import jax
import numpy as np

from selffb import sharding


def evaluate(eval_fn, params, batches, mesh, keys):
  """ce, perplexity, token accuracy, exact match (and bits_per_byte) of a split's batches (the
  `keys` of each)."""
  sums = [eval_fn(params, sharding.put_global(mesh, {k: b[k] for k in keys if k in b}))
          for b in batches]
  total = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(sums))
  ce = total['ce'] / max(total['tokens'], 1)
  out = {'ce': ce, 'perplexity': float(np.exp(ce)),
         'accuracy': total['correct'] / max(total['tokens'], 1),
         'exact': total['exact'] / max(total['sequences'], 1)}
  if 'bytes' in total:  # A text task: bits per UTF-8 byte of the text the tokens encode.
    out['bits_per_byte'] = total['ce'] / np.log(2) / max(total['bytes'], 1)
  return out
