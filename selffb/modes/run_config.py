"""The config of a finished run, for --mode=eval and --mode=sample: the model, data and task are
the ones its checkpoint was written with, whatever --config says; only settings that make sense
to change when evaluating or sampling are taken from --config."""
import ast
import json
import os

import ml_collections

from selffb import errors
from selffb import metrics
from selffb.assemble import resume

# Keys (or sections, ending with '.') --config may change at evaluation or sampling time.
CHANGEABLE = ('sample.', 'evals.', 'mesh.', 'data.eval_batch_size', 'data.data_dir',
              'train.xla_cpu_onednn', 'train.max_checkpoints')
# Sections that decide what the parameters compute and what they are evaluated on.
FIXED = ('model.', 'data.', 'seed')


def _changeable(key):
  return any(key == k or (k.endswith('.') and key.startswith(k)) for k in CHANGEABLE)


def saved(workdir):
  """The config a run in workdir was started with (its config.json; for a self-training run
  written before that file was, round 0's)."""
  for path in (os.path.join(workdir, 'config.json'),
               os.path.join(workdir, 'rounds', 'r00', 'config.json')):
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
  raise FileNotFoundError(f'{workdir} holds no run (no config.json); train first with '
                          f'--mode=train --workdir={workdir}, or check the path.')


def load(config, workdir):
  """The run's config with the CHANGEABLE keys of `config` (None: the run's as it is).

  Raises ConfigError naming every FIXED key where `config` differs from the run's, so a model is
  never evaluated under settings it was not trained with.
  """
  before = saved(workdir)
  flat = resume.migrate(before)
  if config is not None:
    changed = resume.config_changes(before, config)
    fixed = [k for k in changed if k.startswith(FIXED) and not _changeable(k)]
    if fixed:
      raise errors.ConfigError(
          f'the run in {workdir} was trained with other settings than --config gives: ' +
          ', '.join(f'{k} {changed[k][0]!r} (run) vs {changed[k][1]!r}' for k in fixed) +
          ". eval and sample read the run's own config: drop --config, or those overrides.")
    flat.update((k, v) for k, v in metrics.flatten(config.to_dict(), '.').items()
                if _changeable(k))
  run = ml_collections.ConfigDict(resume.unflatten(flat))
  run.lock()
  return run


def _parse(key, text, current):
  """The --config.key=text flag's value, of the type the run's value has."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    if text.lower() in ('true', 'false', '1', '0'):
      return text.lower() in ('true', '1')
    raise errors.ConfigError(f'--config.{key}={text}: true or false.')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = None
  kinds = ((int, float) if isinstance(current, (int, float)) else
           (list, tuple) if isinstance(current, (list, tuple)) else type(current))
  if value is None or isinstance(value, bool) or not isinstance(value, kinds):
    raise errors.ConfigError(f'--config.{key}={text}: the run holds a {type(current).__name__} '
                             f'there ({current!r}).')
  return float(value) if isinstance(current, float) else value


def with_overrides(workdir, overrides):
  """The run's own config with `overrides` ({flat key: flag text}, --config.key=value flags given
  without --config) applied; ConfigError naming a key that is not a config key or not
  CHANGEABLE."""
  flat = resume.migrate(saved(workdir))
  unknown = [k for k in overrides if k not in flat]
  fixed = [k for k in overrides if k in flat and not _changeable(k)]
  if unknown or fixed:
    raise errors.ConfigError(
        ', '.join([f'--config.{k} names no config key' for k in unknown] +
                  [f'--config.{k} is fixed by the run in {workdir}' for k in fixed]) +
        f'; without --config, eval and sample change only {", ".join(CHANGEABLE)}.')
  flat.update({k: _parse(k, v, flat[k]) for k, v in overrides.items()})
  run = ml_collections.ConfigDict(resume.unflatten(flat))
  run.lock()
  return run
