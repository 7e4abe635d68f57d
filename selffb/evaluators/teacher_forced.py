"""Teacher-forced metrics of whole splits (config.evals): the engine's validation metrics
(train/validation.py) over the splits an entry names."""
import fnmatch

from selffb.train import step as step_lib
from selffb.train import validation


class Evaluator:
  """config.evals entry of type 'teacher_forced': {split: metrics} for the splits `splits`
  (a glob over split names) matches."""

  def __init__(self, spec, s):
    self.s = s
    self.splits = sorted(fnmatch.filter(s.splits, spec.splits))
    self.eval_fn = step_lib.jit_eval_step(s)

  def run(self, params):
    s = self.s
    return {name: validation.evaluate(self.eval_fn, params, s.task.eval_batches(
        s.splits[name], s.tokenizer, s.config.data.eval_batch_size, s.fmt), s.mesh,
                           s.task.EVAL_KEYS) for name in self.splits}

  def describe(self, result):
    return 'teacher forced' + ''.join(
        f"\n  {name}: ce {m['ce']:.4f} ppl {m['perplexity']:.3f} acc {m['accuracy']:.4f} "
        f"exact {m['exact']:.4f}" + (f" bpb {m['bits_per_byte']:.4f}" if 'bits_per_byte' in m
                                     else '') for name, m in result.items())
