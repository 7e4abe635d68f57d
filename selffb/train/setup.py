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


def data_dir_of(config, workdir):
  return config.data.data_dir or os.path.join(workdir, 'data')


def _on_process_0_first(fn):
  """fn() on process 0, then (after it has written what it writes) on the other hosts."""
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      fn()
    multihost_utils.sync_global_devices('selffb: data written')
  return fn()


def load_splits(config, workdir):
  """The task's splits, written once under config.data.data_dir (default <workdir>/data); on
  several hosts process 0 writes them and the others open them."""
  task = tasks.get(config.data.task)
  return _on_process_0_first(lambda: task.load_splits(config, data_dir_of(config, workdir)))


def make_tokenizer(config, workdir, task, splits):
  """config.data's tokenizer. A run's own copy of its SentencePiece model (in its workdir) is the
  run's tokenizer in every mode; otherwise a model to train trains on the task's training text
  (process 0 first, the other hosts then read its cache). Without splits and without a copy
  (a dry run) nothing is trained: the tokenizer only knows its vocabulary size."""
  tokenizer = _tokenizer(config, workdir, task, splits)
  # A masked-LM task and the tasks that adapt its encoder share one vocabulary, mask included.
  return tokenizers.with_mask(tokenizer) if getattr(task, 'MASK_TOKEN', False) else tokenizer


def _tokenizer(config, workdir, task, splits):
  d = config.data
  if d.tokenizer != 'sentencepiece' or d.sentencepiece.model:
    return tokenizers.get(d)
  run_copy = os.path.join(workdir, tokenizers.RUN_FILE)
  if workdir and os.path.isfile(run_copy):
    return _same_vocabulary(tokenizers.load(run_copy), d, (
        f'the run in {workdir} trained with the SentencePiece model saved as {run_copy}',
        'its embeddings belong to that vocabulary. Restore vocab_size, or use a new --workdir'))
  if not splits:
    return tokenizers.Untrained(d.sentencepiece.vocab_size)
  texts, fingerprint = task.training_text(config, splits)
  # A named dataset's data dir may be shared or read-only: its model is cached with the run.
  cache = os.path.join(workdir, 'data') if d.tfds_name else data_dir_of(config, workdir)
  tokenizer = _on_process_0_first(lambda: tokenizers.get(d, texts, fingerprint, cache))
  return _same_vocabulary(tokenizer, d, (
      f'the SentencePiece model trained as {tokenizer.path}',
      'SentencePiece could not make more pieces from this text: lower vocab_size to that, or '
      'give more text'))


def _same_vocabulary(tokenizer, d, what):
  """`tokenizer`, if it has config.data.sentencepiece.vocab_size pieces; else ConfigError
  saying `what` = (whose model it is, the fix)."""
  if tokenizer.vocab_size != d.sentencepiece.vocab_size:
    raise checks.ConfigError(f'{what[0]} has {tokenizer.vocab_size} pieces, not '
                             f'config.data.sentencepiece.vocab_size={d.sentencepiece.vocab_size}'
                             f': {what[1]}.')
  return tokenizer


def setup(config, workdir, devices=None, with_data=True):
  """Validates the whole config, then builds data, model, optimizer and mesh.

  `devices` (default: all) are the devices the mesh spans. Without data (sampling, a dry run)
  the splits are empty and the sequence length is the model's.
  """
  devices = jax.devices() if devices is None else devices
  checks.check_config(config, len(devices))
  model, task = models.get(config.model.kind), tasks.get(config.data.task)
  mesh = sharding.make_mesh(config.mesh, devices)
  fmt = task.batch_format(config)
  if getattr(model, 'SEQ2SEQ', False):  # Prompts become the encoder's source.
    fmt = dataclasses.replace(fmt, seq2seq=True)
  splits, seq_len = {}, config.model.max_len
  if with_data:
    splits = load_splits(config, workdir)
  tokenizer = make_tokenizer(config, workdir, task, splits)
  if with_data:
    seq_len = config.data.seq_len or max(
        task.example_length(r, fmt) for r in pipeline.read_all(splits['train']))
    if seq_len > config.model.max_len:
      raise checks.ConfigError(f'training sequences of {seq_len} tokens exceed '
                               f'config.model.max_len={config.model.max_len}.')
    if hasattr(task, 'check_data'):
      task.check_data(config, splits, tokenizer, seq_len)
  return Setup(config=config, model=model,
               model_cfg=model.Config.from_config(config.model, tokenizer.vocab_size),
               task=task, tokenizer=tokenizer, fmt=fmt, splits=splits,
               seq_len=seq_len, mesh=mesh,
               tx=optim.make_optimizer(config.optim, config.train.num_steps,
                                       getattr(model, 'param_group', None),
                                       config.model.num_layers),
               fb=losses.FeedbackSpec.from_config(config.feedback, config.train.num_steps))
