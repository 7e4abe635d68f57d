"""From a config to everything static a run needs: the registry look-ups (model kind, task,
tokenizer), every config check, the data, the mesh, the optimizer and the feedback spec."""
import dataclasses
import os
from typing import Any

import jax
import optax
from jax.experimental import multihost_utils

from selffb import models
from selffb import optim
from selffb import sharding
from selffb import tasks
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.feedback import losses
from selffb.train import checks


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static a run builds from its config before the first step."""
  config: Any
  model: Any  # The model kind's module (selffb/models).
  model_cfg: Any  # Its frozen config.
  task: Any  # The task's module (selffb/tasks).
  tokenizer: Any
  fmt: Any  # The task's batch format.
  splits: dict  # {split name: random-access source}; empty without data.
  seq_len: int
  mesh: Any
  tx: optax.GradientTransformationExtraArgs
  fb: losses.FeedbackSpec

  def module(self, training=False):
    """The Flax module; training mode turns dropout on."""
    return self.model.build(self.model_cfg.replace(deterministic=not training))


def load_splits(config, workdir):
  """The task's splits, written once under config.data.data_dir (default <workdir>/data); on
  several hosts process 0 writes them and the others open them."""
  task = tasks.get(config.data.task)
  data_dir = config.data.data_dir or os.path.join(workdir, 'data')
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      task.load_splits(config, data_dir)
    multihost_utils.sync_global_devices('selffb: data written')
  return task.load_splits(config, data_dir)


def setup(config, workdir, devices=None, with_data=True):
  """Validates the whole config, then builds data, model, optimizer and mesh.

  `devices` (default: all) are the devices the mesh spans. Without data (sampling) the splits
  are empty and the sequence length is the model's.
  """
  devices = jax.devices() if devices is None else devices
  checks.check_config(config, len(devices))
  tokenizer = tokenizers.get(config.data.tokenizer)
  model, task = models.get(config.model.kind), tasks.get(config.data.task)
  mesh = sharding.make_mesh(config.mesh, devices)
  fmt = task.batch_format(config)
  if getattr(model, 'SEQ2SEQ', False):  # Prompts become the encoder's source.
    fmt = dataclasses.replace(fmt, seq2seq=True)
  splits, seq_len = {}, config.model.max_len
  if with_data:
    splits = load_splits(config, workdir)
    seq_len = config.data.seq_len or max(
        task.example_length(r, fmt) for r in pipeline.read_all(splits['train']))
    if seq_len > config.model.max_len:
      raise checks.ConfigError(f'training sequences of {seq_len} tokens exceed '
                               f'config.model.max_len={config.model.max_len}.')
  return Setup(config=config, model=model,
               model_cfg=model.Config.from_config(config.model, tokenizer.vocab_size),
               task=task, tokenizer=tokenizer, fmt=fmt, splits=splits,
               seq_len=seq_len, mesh=mesh,
               tx=optim.make_optimizer(config.optim, config.train.num_steps),
               fb=losses.FeedbackSpec.from_config(config.feedback, config.train.num_steps))
