"""Every config check, run before any data is written or any step compiled, with every problem
reported at once. What a check builds to validate it (the model kind, the task, the model's
config, the optimizer, the feedback spec, a mode's own inputs) is kept for the run, never built
again.

Model- and task-specific checks come from the registries (`Config.from_config` of the model
kind, `config_problems` of the task).
"""
import dataclasses
import os
from typing import Any

import jax

from selffb import errors
from selffb import evaluators
from selffb import models
from selffb import optim
from selffb import runtime
from selffb import sampling
from selffb import sharding
from selffb import tasks
from selffb.assemble import init_from
from selffb.assemble import ranges
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.feedback import losses
from selffb.feedback import records
from selffb.feedback import scoring


@dataclasses.dataclass(frozen=True)
class Parts:
  """What the checks built (None where a problem stopped a piece)."""
  model: Any  # The model kind's module (selffb/models).
  task: Any  # The task's module (selffb/tasks).
  model_cfg: Any
  tx: Any
  fb: Any
  mode_inputs: Any  # What the mode's own checks built (None without them).
  init_source: Any = None  # config.model.init_from's arrays when read to check them.


def optimizer(optim_config, config, model):
  """The optimizer of `config` (its model kind's module `model`, or None) with `optim_config` in
  place of config.optim: the one place a run's optimizer is built."""
  return optim.make_optimizer(optim_config, config.train.num_steps,
                              getattr(model, 'param_group', None), config.model.num_layers)


def schedule(config):
  """The learning-rate schedule the optimizer of `config` follows (for the progress line)."""
  return optim.make_schedule(config.optim, config.train.num_steps)


def _collector():
  found = []

  def check(fn):
    try:
      return fn()
    except (ValueError, KeyError, TypeError) as e:
      found.append(str(e).strip('"\''))
      return None

  def need(ok, message):
    if not ok:
      found.append(message)

  return found, check, need


def survey(config, num_devices, mode_inputs=None):
  """(every problem of `config` for `num_devices` devices, as messages naming the key to fix;
  the Parts built on the way). `mode_inputs(config) -> (problems, built)` are the mode's own
  checks, run once the task is known."""
  found, check, need = _collector()
  found.extend(ranges.problems(config))
  tokenizer_problems = tokenizers.problems(config.data)
  found.extend(tokenizer_problems)
  task = check(lambda: tasks.get(config.data.task))
  vocab = None if tokenizer_problems else check(lambda: tokenizers.vocab_size(
      config.data, mask=getattr(task, 'MASK_TOKEN', False)))
  model = check(lambda: models.get(config.model.kind))
  model_cfg = None
  if model is not None and vocab is not None and not any(
      p.startswith('config.model.') for p in found):
    model_cfg = check(lambda: model.Config.from_config(config.model, vocab))
  check(lambda: losses.check_loss_name(config.feedback.loss))
  check(lambda: losses.check_blend_name(config.feedback.blend))
  fb = check(lambda: losses.FeedbackSpec.from_config(config.feedback, config.train.num_steps))
  check(lambda: records.Rules.from_config(config.data.feedback))
  check(lambda: optim.check_feedback_place(config.optim.feedback_scale_at))
  tx = check(lambda: optimizer(config.optim, config, model))
  check(lambda: sampling.SamplingParams.from_config(config.sample))
  d, m = config.data, config.model
  need(d.seq_len <= m.max_len, f'config.data.seq_len={d.seq_len} exceeds config.model.max_len='
       f'{m.max_len}.')
  found.extend(_mesh_problems(config, num_devices, model, model_cfg))
  found.extend(_task_problems(config, task, model))
  init_found = check(lambda: init_from.problems(config))
  found.extend(init_found or [])
  init_source = None
  if init_found == [] and config.model.init_from and model_cfg is not None:
    fit_found, init_source = check(lambda: init_from.fit(config, model, model_cfg)) or ([], None)
    found.extend(fit_found)
  found.extend(selftrain_problems(config.selftrain))
  found.extend(evaluators.problems(config.evals))
  built = None
  if mode_inputs is not None and task is not None:
    mode_found, built = check(lambda: mode_inputs(config)) or ([], None)
    found.extend(mode_found)
  # A name check and the builder it guards may both report.
  return list(dict.fromkeys(found)), Parts(model, task, model_cfg, tx, fb, built, init_source)


def problems(config, num_devices, mode_inputs=None):
  """Every problem of `config` for `num_devices` devices (see survey)."""
  return survey(config, num_devices, mode_inputs)[0]


def _task_problems(config, task, model):
  """The task's own problems and how it fits the model kind, tokenizer and select_metric."""
  found, _, need = _collector()
  d = config.data
  if task is not None:
    found.extend(task.config_problems(config))
    need(model is None or not getattr(task, 'packs', lambda c: False)(config) or getattr(
        model, 'SEGMENTS', False), f'config.data.text.pack=True puts several documents in a row, '
         f'which model.kind={config.model.kind!r} cannot keep apart: set pack=False.')
    need(model is None or not (getattr(task, 'DECODER_ONLY', False) and
                               getattr(model, 'SEQ2SEQ', False)),
         f'config.data.task={d.task!r} trains on documents with no source for '
         f"model.kind={config.model.kind!r}: use 'decoder' (or 'lstm' with pack=False).")
    need(model is None or not hasattr(model, 'HEADS') or hasattr(task, 'HEAD'),
         f"config.model.kind={config.model.kind!r} trains with the encoder tasks ('mlm', "
         f"'classify', 'ner'); config.data.task={d.task!r} needs a decoder-style kind.")
    need(d.tokenizer != 'sentencepiece' or d.sentencepiece.model or
         hasattr(task, 'training_text'),
         f'config.data.task={d.task!r} has no text to train a SentencePiece model on: give '
         'config.data.sentencepiece.model, or use the byte tokenizer.')
  select = config.train.select_metric
  need(not select or task is None or select in getattr(task, 'SCORES', ()),
       f'config.train.select_metric={select!r}: task {d.task!r} reports '
       f"{getattr(task, 'SCORES', ())}; use one of those, or '' for the validation CE.")
  return found


def _mesh_problems(config, num_devices, model, model_cfg):
  """The mesh against the devices, the batch against its shards, the rules against the model."""
  found, _, need = _collector()
  try:
    shape = dict(zip(sharding.AXES, sharding.mesh_shape(config.mesh, num_devices)))
  except ValueError as e:
    return [str(e)]
  shards, accum = shape['data'] * shape['fsdp'], max(config.train.grad_accum_steps, 1)
  need(config.data.batch_size % (shards * accum) == 0,
       f'config.data.batch_size={config.data.batch_size} is not divisible by the {shards} batch '
       f'shards of config.mesh {shape} times grad_accum_steps={accum}.')
  need(config.data.eval_batch_size % shards == 0,
       f'config.data.eval_batch_size={config.data.eval_batch_size} is not divisible by the '
       f'{shards} batch shards of config.mesh {shape}; evaluation splits its batches over them.')
  sizes = model.logical_sizes(model_cfg) if model_cfg is not None else {}
  for name, axis in config.mesh.rules.items():
    if (model_cfg is not None and name not in sizes) or (axis and axis not in sharding.AXES):
      found.append(f'config.mesh.rules.{name}={axis!r}: logical axes are {tuple(sizes)}, '
                   f"mesh axes {sharding.AXES} (or '' to replicate).")
    elif axis and sizes.get(name) is not None and sizes[name] % shape[axis]:
      found.append(f'config.mesh.rules.{name}={axis!r}: {name} has {sizes[name]} entries, not '
                   f'divisible by mesh axis {axis}={shape[axis]}; change the rule or the size.')
  return found


def selftrain_problems(st):
  """Problems of config.selftrain beyond its ranges (read by --mode=selftrain, checked always)."""
  found, check, need = _collector()
  check(lambda: scoring.normalize_weights(st.weights.to_dict()))
  need(st.samples_per_prompt == 1 or st.temperature > 0,
       f'config.selftrain.samples_per_prompt={st.samples_per_prompt} identical greedy candidates: '
       'set config.selftrain.temperature > 0, or samples_per_prompt=1.')
  need(st.warmup_steps < st.steps_per_round, f'config.selftrain.warmup_steps={st.warmup_steps} '
       f'must be below steps_per_round={st.steps_per_round}.')
  need(not st.ratings_file or os.path.isfile(st.ratings_file),
       f'config.selftrain.ratings_file={st.ratings_file!r} does not exist.')
  for key, names in (('mixing', pipeline.MIXINGS), ('schedule', ('optim',) + optim.SCHEDULES)):
    need(st[key] in names, f'config.selftrain.{key}={st[key]!r}; choose one of {names}.')
  need(st.mixing != 'rounds' or not st.max_self_examples,
       f'config.selftrain.max_self_examples={st.max_self_examples} caps the pooled mix only; '
       "set it to 0 with mixing='rounds'.")
  return found


def raise_problems(found):
  """ConfigError listing every problem in `found`, if any."""
  if found:
    raise errors.ConfigError(f'the config has {len(found)} problem(s):\n  - ' +
                             '\n  - '.join(found))


def check_config(config, num_devices=None, mode_inputs=None, workdir=None):
  """The Parts of `config` (for `num_devices` devices, default all), or ConfigError listing
  every problem (see survey) and, given a `workdir`, why it cannot be a run directory."""
  found, parts = survey(config, jax.device_count() if num_devices is None else num_devices,
                        mode_inputs)
  if workdir is not None:
    found.extend(filter(None, [runtime.workdir_problem(workdir)]))
  raise_problems(found)
  return parts
