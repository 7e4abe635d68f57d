"""--mode=eval: validation metrics and config.evals of a run's latest checkpoint (for a
self-training run, its last finished round)."""
from absl import logging

from selffb import evaluators
from selffb.assemble import setup as setup_lib
from selffb.modes import run_config
from selffb.modes import selftrain
from selffb.train import state as state_lib
from selffb.train import step as step_lib
from selffb.train import validation


def evaluate_checkpoint(config, workdir):
  """Reports validation metrics and the evaluators' results of the best parameters, under the
  run's own config (`config`, if given, may change only run_config.CHANGEABLE keys)."""
  config = run_config.load(config, workdir)
  s = setup_lib.setup(config, workdir)
  step, best_params, book = state_lib.restore_best_params(s, selftrain.model_dir(workdir))
  val_batches = s.task.eval_batches(s.splits['validation'], s.tokenizer,
                                    config.data.eval_batch_size, s.fmt)
  val = validation.evaluate(step_lib.jit_eval_step(s), best_params, val_batches, s.mesh,
                                s.task.EVAL_KEYS)
  evals = evaluators.build(config.evals, s)
  results = evaluators.run(evals, best_params)
  logging.info('checkpoint step %d (best params from step %d): val %s', step,
               book['best_step'], {k: round(v, 4) for k, v in val.items()})
  for name, r in results.items():
    logging.info('%s: %s', name, evals[name].describe(r))
  return {'step': step, 'validation': val, **results}
