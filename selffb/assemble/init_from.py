"""config.model.init_from: the parameters a training run starts from, by name, from a run's
workdir (its best parameters: an MLM run for the adaptation tasks) or another library's
checkpoint the model kind imports (`checkpoint_problems`, `load_checkpoint`: the encoder reads
Hugging Face BERT). Parameters the source has under the same name and shape are
taken; the others (a new task head) keep their fresh initialisation; the source's own head
(another task's) is left out. The same name with another shape is an error naming it."""
import os

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from selffb import checkpoint
from selffb import errors
from selffb import models


def _foreign(config):
  """The model kind's problems with config.model.init_from as another library's checkpoint, or
  None if it is not one the kind reads."""
  reader = getattr(models.get(config.model.kind), 'checkpoint_problems', None)
  return None if reader is None else reader(config.model, config.model.init_from)


def problems(config):
  """Problems of config.model.init_from, known before anything is read."""
  path = config.model.init_from
  if not path:
    return []
  foreign = _foreign(config)
  if foreign is not None:
    return foreign
  if not os.path.isdir(os.path.join(path, 'checkpoints')):
    return [f'config.model.init_from={path!r} is neither a run (a workdir with checkpoints/) '
            f'nor a checkpoint model.kind={config.model.kind!r} imports (for the encoder: a '
            'Hugging Face BERT directory with config.json and model.safetensors).']
  return []


def _shapes(tree, path=()):
  """{name: shape} of every leaf of a nested dict of arrays (or of shape tuples)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_shapes(value, path + (key,)))
    else:
      out['/'.join(path + (key,))] = tuple(value) if isinstance(value, tuple) else np.shape(value)
  return out


def _other_shape(name, there, here):
  return (f'config.model.init_from: parameter {name} is {there} there and {here} in this model: '
          'use the same config.model sizes and tokenizer (the vocabulary, mask token included) '
          'as the run or checkpoint it comes from.')


def fit(config, model, model_cfg):
  """(problems, source) of config.model.init_from against the model's parameters, found before
  anything is written: a parameter of another shape, or none shared. A run's shapes come from
  its checkpoint's metadata; another library's checkpoint is read, once: `source` is its
  arrays, for start_params (None for a run)."""
  path = config.model.init_from
  if not path or model_cfg is None:
    return [], None
  source = model.load_checkpoint(path) if _foreign(config) is not None else None
  there = _shapes(source) if source is not None else checkpoint.param_shapes(path)
  if there is None:
    return [f'config.model.init_from={path!r} has no checkpoint: train it first.'], None
  there = there if source is not None else _shapes(there)
  module = model.build(model_cfg)
  here = _shapes(jax.eval_shape(lambda rng: nn.unbox(module.init(
      rng, *model.example_inputs(model_cfg, 1))['params']), jax.random.key(0)))
  shared = [n for n in here if n in there]
  found = [_other_shape(n, there[n], here[n]) for n in shared if there[n] != here[n]][:3]
  if not shared:
    found.append(f'config.model.init_from={path!r} shares no parameter with this model.')
  return found, source


def _run_params(workdir):
  """The best parameters of a run's newest checkpoint, as numpy arrays."""
  got = checkpoint.host_params(workdir)
  if got is None:
    raise errors.InputError(f'config.model.init_from={workdir!r} has no checkpoint: train it '
                            'first.')
  logging.info('init_from: the best parameters of %s (checkpoint step %d)', workdir, got[0])
  return got[1]


def merge(fresh, source, path=()):
  """(params, taken, kept fresh, left out): `fresh` (arrays, maybe sharded over hosts) with every
  leaf `source` (numpy) has under the same name and shape."""
  taken, kept, left = [], [], [f"{'/'.join(path + (k,))}" for k in source if k not in fresh]
  out = {}
  for key, value in fresh.items():
    name = '/'.join(path + (key,))
    if key not in source:
      out[key] = value
      kept.append(name)
    elif isinstance(value, dict):
      out[key], *lists = merge(value, source[key], path + (key,))
      for total, part in zip((taken, kept, left), lists):
        total.extend(part)
    elif np.shape(source[key]) != np.shape(value):
      raise errors.InputError(_other_shape(name, np.shape(source[key]), np.shape(value)))
    else:
      out[key] = np.asarray(source[key], value.dtype)
      taken.append(name)
  return out, taken, kept, left


def start_params(s, fresh):
  """`fresh` (the run's initial parameters) with what config.model.init_from holds."""
  path = s.config.model.init_from
  source = s.init_source if s.init_source is not None else (
      s.model.load_checkpoint(path) if _foreign(s.config) is not None else _run_params(path))
  params, taken, kept, left = merge(fresh, source)
  if not taken:
    raise errors.InputError(f'config.model.init_from={path!r} shares no parameter with this '
                            'model.')
  logging.info('init_from %s: %d tensors loaded; initialised fresh: %s; left out: %s', path,
               len(taken), sorted({n.split('/')[0] for n in kept}) or 'none',
               sorted({n.split('/')[0] for n in left}) or 'none')
  return params
