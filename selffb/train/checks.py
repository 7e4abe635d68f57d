"""Every config check, run before any data is written or any step compiled, with every problem
reported at once; and the check that a checkpoint can be resumed under the current config.

Model- and task-specific checks come from the registries (`Config.from_config` of the model
kind, `config_problems` of the task).
"""
import os

import jax
import ml_collections

from selffb import errors
from selffb import evaluators
from selffb import metrics
from selffb import models
from selffb import optim
from selffb import sampling
from selffb import sharding
from selffb import tasks
from selffb.data import tokenizers
from selffb.feedback import losses
from selffb.feedback import records
from selffb.feedback import scoring
from selffb.train import init_from
from selffb.train import ranges


class ConfigError(errors.InputError):
  """The config cannot run; the message lists every problem with the key to fix."""


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


def problems(config, num_devices):
  """Every problem of `config` for `num_devices` devices, as messages naming the key to fix."""
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
  check(lambda: losses.FeedbackSpec.from_config(config.feedback, config.train.num_steps))
  check(lambda: records.Rules.from_config(config.data.feedback))
  check(lambda: optim.check_feedback_place(config.optim.feedback_scale_at))
  check(lambda: optim.make_optimizer(config.optim, config.train.num_steps,
                                     getattr(model, 'param_group', None),
                                     config.model.num_layers))
  check(lambda: sampling.SamplingParams.from_config(config.sample))
  d, m = config.data, config.model
  need(d.seq_len <= m.max_len, f'config.data.seq_len={d.seq_len} exceeds config.model.max_len='
       f'{m.max_len}.')
  found.extend(_mesh_problems(config, num_devices, model, model_cfg))
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
  found.extend(check(lambda: init_from.problems(config)) or [])
  found.extend(selftrain_problems(config.selftrain))
  found.extend(evaluators.problems(config.evals))
  return list(dict.fromkeys(found))  # A name check and the builder it guards may both report.


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
  return found


def check_config(config, num_devices=None):
  found = problems(config, jax.device_count() if num_devices is None else num_devices)
  if found:
    raise ConfigError(f'the config has {len(found)} problem(s):\n  - ' + '\n  - '.join(found))


# Saved configs from before the layout move (issue 16), the new arms and the sweep's executor
# settings (issue 17), recorded feedback (issue 21) and the strings and pairs tasks (issue 20):
# keys they added, with the values those runs had (the slurm defaults change nothing a run
# computes), and the key removed (the vocabulary now comes from the tokenizer).
_ADDED = {'model.kind': 'decoder', 'data.tokenizer': 'byte',
          'evals.exact_match.type': 'greedy_exact_match', 'evals.exact_match.splits': 'test_*',
          'optim.feedback_scale_at': 'gradients', 'feedback.blend': 'none',
          'feedback.blend_fraction': 0.5,
          'slurm.partition': '', 'slurm.account': '', 'slurm.qos': '', 'slurm.constraint': '',
          'slurm.nodes': 1, 'slurm.gpus_per_node': 0, 'slurm.cpus_per_task': 2,
          'slurm.mem_gb': 16, 'slurm.timeout_min': 120, 'slurm.array_parallelism': 64,
          'slurm.setup': [], 'slurm.extra': [],
          # Issue 21: recorded feedback (task 'feedback', --mode=finetune).
          'data.feedback.train_path': '', 'data.feedback.validation_path': '',
          'data.feedback.validation_fraction': 0.1, 'data.feedback.errors': 'strict',
          'data.feedback.rating_scale': [1.0, 5.0], 'data.feedback.labels': 'good=1,bad=0',
          'data.feedback.label_loss': 'weighted', 'data.feedback.correction_weight': 1.0,
          'data.feedback.corrected_original': 'downweight', 'data.feedback.original_weight': 0.2,
          'data.feedback.correction_pairs': False, 'data.feedback.pair_sft_weight': 0.0,
          'data.feedback.base_task': '', 'data.feedback.example_prompts': 2000,
          'data.feedback.example_digits': [5, 6], 'feedback.preference.beta': 0.1,
          'feedback.preference.weight': 1.0, 'feedback.preference.kto_desirable': 1.0,
          'feedback.preference.kto_undesirable': 1.0, 'finetune.init_workdir': '',
          # Issue 20: the strings task.
          'data.strings.op': 'reverse', 'data.strings.alphabet': 'abcdefghij',
          'data.strings.min_length': 1, 'data.strings.max_length': 8,
          'data.strings.num_train': 20000, 'data.strings.num_validation': 500,
          'data.strings.num_test': 200, 'data.strings.test_lengths': [4, 8, 10, 12],
          'data.pairs.tfds_name': '', 'data.pairs.data_dir': '', 'data.pairs.source_key': 'en',
          'data.pairs.target_key': 'de', 'data.pairs.separator': ' => ',
          'data.pairs.train_split': 'train', 'data.pairs.validation_split': 'validation',
          'data.pairs.test_split': 'test[:500]', 'data.pairs.test_name': 'test',
          'data.pairs.max_bytes': 64,
          # Issue 18: named tfds text, SentencePiece, packing (old 'text' runs padded a chunk a
          # row).
          'data.tfds_name': '', 'data.workers': 0, 'data.text.feature': '',
          'data.text.train_split': 'train', 'data.text.validation_split': '',
          'data.text.prepare': True, 'data.text.encoding_errors': 'error',
          'data.text.long_docs': 'split', 'data.text.pack': False, 'data.text.shuffle_window': 0,
          'data.text.eval_sequences': 256, 'data.sentencepiece.model': '',
          'data.sentencepiece.vocab_size': 1024, 'data.sentencepiece.model_type': 'unigram',
          'data.sentencepiece.character_coverage': 0.9995,
          'data.sentencepiece.max_sentences': 200000, 'data.sentencepiece.byte_fallback': True,
          # Issue 19: the encoder, its tasks, freezing, selection by a task score.
          'model.head': 'mlm', 'model.num_labels': 0, 'model.pooling': 'first',
          'model.norm_position': 'pre', 'model.norm_eps': 1e-6, 'model.type_vocab_size': 0,
          'model.init_from': '', 'data.wordpiece.path': '', 'data.mlm.rate': 0.15,
          'data.mlm.mask': 0.8, 'data.mlm.random': 0.1, 'data.mlm.whole_word': False,
          'data.labelled.tfds_name': '', 'data.labelled.text_feature': '',
          'data.labelled.label_feature': '', 'data.labelled.train_split': 'train',
          'data.labelled.validation_split': 'validation', 'data.labelled.test_split': 'test',
          'data.labelled.num_train': 4000, 'data.labelled.num_validation': 500,
          'data.labelled.num_test': 500, 'optim.freeze': 'none', 'optim.top_k': 2,
          'train.select_metric': ''}
_REMOVED = ('model.vocab_size',)
# Keys added with a new optimizer-state layout: a checkpoint whose config lacks one holds a state
# this code cannot restore (issue 17 gave scale_by_feedback's state a ratio_ema).
_STATE_LAYOUT_KEYS = ('optim.feedback_scale_at',)
_RENAMED_VALUES = {('selftrain.verifier', 'addition'): 'task'}


def migrate(saved):
  """A saved config dict as flat {key: value}, brought up to the current layout."""
  flat = {k: v for k, v in metrics.flatten(saved, '.').items() if k not in _REMOVED}
  if not any(k.startswith('evals.') for k in flat):
    flat.update({k: v for k, v in _ADDED.items() if k.startswith('evals.')})
  for key, value in _ADDED.items():
    flat.setdefault(key, value)
  return {k: _RENAMED_VALUES.get((k, v), v) if isinstance(v, str) else v
          for k, v in flat.items()}


def unflatten(flat):
  nested = {}
  for key, value in flat.items():
    *path, leaf = key.split('.')
    node = nested
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return nested


def config_changes(saved, current):
  """{key: (saved value, current value)} for every flat key where a saved config dict (from a
  checkpoint or config.json, migrated) and the current ConfigDict differ; a tuple equals the
  list JSON made of it."""
  before, after = migrate(saved), metrics.flatten(current.to_dict(), '.')
  return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
          if before.get(k) != after.get(k)
          and not (isinstance(after.get(k), (list, tuple)) and list(after[k]) == before.get(k))}


def resume_changes(saved, current, abstract_params):
  """Compares a checkpoint's config with the current one.

  Raises ConfigError naming the keys when the model or the optimizer state's shape differ, or
  when the checkpoint predates the optimizer state's layout; returns the other changed keys as
  {key: (saved, current)} (a new lr or step count is fine).
  """
  older = [k for k in _STATE_LAYOUT_KEYS if k not in metrics.flatten(saved, '.')]
  if older:
    raise ConfigError(f'the checkpoint was written before {older[0]} existed, by a selffb whose '
                      'optimizer state had another shape; its parameters still evaluate and '
                      'sample, but training cannot resume from it. Use a new --workdir.')
  changed = config_changes(saved, current)
  model_keys = [k for k in changed if k.startswith(('model.', 'data.tokenizer'))]
  if model_keys:
    raise ConfigError('the checkpoint was written by a different model; changed: ' + ', '.join(
        f'{k} {changed[k][0]!r} -> {changed[k][1]!r}' for k in model_keys) +
        '. Use a new --workdir, or restore those values.')
  optim_keys = [k for k in changed if k.startswith('optim.')]
  if optim_keys:
    old = ml_collections.ConfigDict(unflatten(migrate(saved))['optim'])
    model = models.get(current.model.kind)
    structure = lambda c: jax.tree.structure(jax.eval_shape(optim.make_optimizer(
        c, current.train.num_steps, getattr(model, 'param_group', None),
        current.model.num_layers).init, abstract_params))
    if structure(old) != structure(current.optim):
      raise ConfigError('the optimizer state in the checkpoint has another shape; changed: ' +
                        ', '.join(f'{k} {changed[k][0]!r} -> {changed[k][1]!r}'
                                  for k in optim_keys) + '. Use a new --workdir, or restore them.')
  return changed
