"""--dry_run: every check and the model built abstractly, then a summary of what the run would
do; nothing is written and no data is made."""
import functools
import math
import os

import jax
from absl import logging

from selffb.assemble import setup as setup_lib
from selffb.modes import finetune
from selffb.modes import run_config
from selffb.modes import selftrain
from selffb.modes import train
from selffb.train import state as state_lib


def mode_inputs(mode, workdir=None):
  """The own checks of --mode=`mode` (None for eval and sample, which take the run's config)."""
  return {'train': train.inputs, 'selftrain': selftrain.inputs,
          'finetune': functools.partial(finetune.inputs, workdir=workdir)}.get(mode)


def plan(config, workdir, mode):
  """Checks `config`, counts the parameters without materialising them, logs the plan and
  returns it as a dict."""
  if mode in ('eval', 'sample'):
    config = run_config.load(config, workdir)
  s = setup_lib.setup(config, workdir, with_data=False, mode_inputs=mode_inputs(mode, workdir))
  shapes = jax.tree.leaves(state_lib.abstract_params(s))
  c = config
  summary = {
      'mode': mode, 'workdir': os.path.abspath(workdir),
      'resumes': any(os.path.isdir(os.path.join(workdir, d)) for d in ('checkpoints', 'rounds')),
      'model': c.model.kind, 'parameters': sum(math.prod(x.shape) for x in shapes),
      'vocab_size': s.tokenizer.vocab_size, 'task': c.data.task,
      'data_dir': c.data.data_dir or os.path.join(workdir, 'data'),
      'mesh': dict(s.mesh.shape), 'steps': c.train.num_steps, 'batch_size': c.data.batch_size,
      'loss': c.feedback.loss, 'evals': {k: dict(v) for k, v in c.evals.items()}}
  if mode == 'selftrain':
    summary['rounds'] = c.selftrain.rounds
    summary['steps_per_round'] = c.selftrain.steps_per_round
    summary['control'] = c.selftrain.control
  logging.info('dry run, nothing written; the config passes every check:\n%s', '\n'.join(
      f'  {k}: {v}' for k, v in summary.items()))
  return summary
