"""From a config to the assembled run (Setup), once: the registry look-ups (model kind, task,
tokenizer), every config check (building what it checks), the data, the mesh, the optimizer and
the feedback spec, and what the training loop is handed besides (the resume check, the
validation scorer)."""
import dataclasses
import os
from typing import Any

import jax
import optax
from jax.experimental import multihost_utils

from selffb import errors
from selffb import sharding
from selffb.assemble import checks
from selffb.assemble import resume
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.evaluators import labelling
from selffb.feedback import losses


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
  schedule: Any = None  # step -> learning rate, as the optimizer's; the progress line logs it.
  mode_inputs: Any = None  # What the mode's own checks built (selftrain: its scoring inputs).
  # What the training loop is handed (a Setup built by hand, for timing, may leave them out):
  resume_changes: Any = None  # (saved config dict, config, params) -> changes; raises if none fit.
  scorer: Any = None  # (Setup, batches, labels) -> params -> report, for train.select_metric.
  init_source: Any = None  # config.model.init_from's arrays, read by the checks (or None).

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


def _load_splits(config, workdir, task):
  """The task's splits, written once under config.data.data_dir (default <workdir>/data); on
  several hosts process 0 writes them and the others open them."""
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
    raise errors.ConfigError(f'{what[0]} has {tokenizer.vocab_size} pieces, not '
                             f'config.data.sentencepiece.vocab_size={d.sentencepiece.vocab_size}'
                             f': {what[1]}.')
  return tokenizer


def _data(config, workdir, task, fmt):
  """(splits, tokenizer, sequence length) of the task's data, written first if need be."""
  splits = _load_splits(config, workdir, task)
  tokenizer = make_tokenizer(config, workdir, task, splits)
  seq_len = config.data.seq_len or max(
      task.example_length(r, fmt) for r in pipeline.read_all(splits['train']))
  if seq_len > config.model.max_len:
    raise errors.ConfigError(f'training sequences of {seq_len} tokens exceed '
                             f'config.model.max_len={config.model.max_len}.')
  if hasattr(task, 'check_data'):
    task.check_data(config, splits, tokenizer, seq_len)
  return splits, tokenizer, seq_len


def setup(config, workdir, devices=None, with_data=True, mode_inputs=None):
  """The assembled run: every check (and `mode_inputs`, the mode's own: see checks.survey), all
  problems reported at once before anything is written; then data, model, optimizer and mesh.

  `devices` (default: all) are the devices the mesh spans. Without data (sampling, a dry run)
  the splits are empty and the sequence length is the model's.
  """
  devices = jax.devices() if devices is None else devices
  parts = checks.check_config(config, len(devices), mode_inputs, workdir)
  fmt = parts.task.batch_format(config)
  if getattr(parts.model, 'SEQ2SEQ', False):  # Prompts become the encoder's source.
    fmt = dataclasses.replace(fmt, seq2seq=True)
  mesh = sharding.make_mesh(config.mesh, devices)
  if with_data:
    splits, tokenizer, seq_len = _data(config, workdir, parts.task, fmt)
  else:
    splits, tokenizer = {}, make_tokenizer(config, workdir, parts.task, {})
    seq_len = config.model.max_len
  return Setup(config=config, model=parts.model, model_cfg=parts.model_cfg, task=parts.task,
               tokenizer=tokenizer,
               fmt=fmt, splits=splits, seq_len=seq_len, mesh=mesh, tx=parts.tx, fb=parts.fb,
               schedule=checks.schedule(config),
               mode_inputs=parts.mode_inputs, resume_changes=resume.resume_changes,
               scorer=labelling.scorer if config.train.select_metric else None,
               init_source=parts.init_source)


def with_data(s, workdir):
  """Setup `s`, assembled without data, with its data (the finetune mode writes an example
  file first with the bare run)."""
  splits, tokenizer, seq_len = _data(s.config, workdir, s.task, s.fmt)
  return dataclasses.replace(s, splits=splits, tokenizer=tokenizer, seq_len=seq_len)


def for_round(s, config, **changes):
  """Setup `s` under `config` (a self-training round's steps and learning rate), its optimizer
  and feedback spec built for it, with `changes` to its other fields."""
  return dataclasses.replace(
      s, config=config, tx=checks.optimizer(config.optim, config, s.model),
      schedule=checks.schedule(config),
      fb=losses.FeedbackSpec.from_config(config.feedback, config.train.num_steps), **changes)
