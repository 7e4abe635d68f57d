"""Whether a run's saved config (a checkpoint's, or a workdir's config.json) still fits: old
configs brought up to the current layout (migrate), what changed (config_changes), and whether a
checkpoint can resume under the current config (resume_changes, which the training loop is handed
with the assembled run)."""
import jax
import ml_collections

from selffb import errors
from selffb import metrics
from selffb import models
from selffb.assemble import checks

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
          'train.select_metric': '',
          # Issue 35: the relative scale's hardness floor (older runs guarded r by 1e-6 instead).
          'optim.feedback_floor': 1e-3,
          # Issue 35: local CoNLL files, labelled tfds prepared in-process.
          'data.labelled.prepare': True, 'data.labelled.conll_dir': '',
          'data.labelled.train_path': '', 'data.labelled.validation_path': '',
          'data.labelled.test_path': '',
          # Issue 35: local text split files and the document separator.
          'data.text.train_paths': '', 'data.text.validation_paths': '',
          'data.text.test_paths': '', 'data.text.separator': 'file',
          # Issue 30: the self-consistency score source (older runs had none).
          'selftrain.weights.consistency': 0.0,
          # Issue 30: the self-improvement recipe's knobs (older runs: today's rounds).
          'selftrain.operands': 'one_n', 'selftrain.mixing': 'pooled',
          'selftrain.base_weight': 16.0, 'selftrain.keep_optimizer': False,
          'selftrain.schedule': 'optim', 'selftrain.decay_fraction': 0.2}
_REMOVED = ('model.vocab_size',)
# Keys added with a new optimizer-state layout: a checkpoint whose config lacks one holds a state
# this code cannot restore (issue 17 gave scale_by_feedback's state a ratio_ema).
_STATE_LAYOUT_KEYS = ('optim.feedback_scale_at',)
_RENAMED_VALUES = {('selftrain.verifier', 'addition'): 'task'}
# Renames for configs saved before a key existed: before issue 35 (no optim.feedback_floor),
# 'focal' held (1 - F)^gamma under stop-gradient, the arm now named 'focal_sg'; a config saved
# since means Lin et al.'s focal by 'focal' and keeps it.
_RENAMED_BEFORE = {'optim.feedback_floor': {('feedback.loss', 'focal'): 'focal_sg'}}


def migrate(saved):
  """A saved config dict as flat {key: value}, brought up to the current layout."""
  flat = {k: v for k, v in metrics.flatten(saved, '.').items() if k not in _REMOVED}
  renames = dict(_RENAMED_VALUES)
  for marker, renamed in _RENAMED_BEFORE.items():
    if marker not in flat:
      renames.update(renamed)
  if not any(k.startswith('evals.') for k in flat):
    flat.update({k: v for k, v in _ADDED.items() if k.startswith('evals.')})
  for key, value in _ADDED.items():
    flat.setdefault(key, value)
  return {k: renames.get((k, v), v) if isinstance(v, str) else v for k, v in flat.items()}


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
    raise errors.ConfigError(
        f'the checkpoint was written before {older[0]} existed, by a selffb whose optimizer '
        'state had another shape; its parameters still evaluate and sample, but training '
        'cannot resume from it. Use a new --workdir.')
  if ('optim.feedback_floor' not in metrics.flatten(saved, '.')
      and current.optim.feedback_scale == 'relative'):
    raise errors.ConfigError(
        'the checkpoint was written before optim.feedback_floor existed, when the relative '
        "feedback scale's state held EMA(F) and EMA(r), not EMA(1 - F) and EMA(r - 1); it cannot "
        "resume with optim.feedback_scale='relative'. Use a new --workdir, or 'none'.")
  changed = config_changes(saved, current)
  listed = lambda keys: ', '.join(f'{k} {changed[k][0]!r} -> {changed[k][1]!r}' for k in keys)
  model_keys = [k for k in changed if k.startswith(('model.', 'data.tokenizer'))]
  if model_keys:
    raise errors.ConfigError('the checkpoint was written by a different model; changed: ' +
                             listed(model_keys) + '. Use a new --workdir, or restore those values.')
  optim_keys = [k for k in changed if k.startswith('optim.')]
  if optim_keys:
    old = ml_collections.ConfigDict(unflatten(migrate(saved))['optim'])
    model = models.get(current.model.kind)
    structure = lambda c: jax.tree.structure(jax.eval_shape(
        checks.optimizer(c, current, model).init, abstract_params))
    if structure(old) != structure(current.optim):
      raise errors.ConfigError('the optimizer state in the checkpoint has another shape; '
                               f'changed: {listed(optim_keys)}. Use a new --workdir, or restore '
                               'them.')
  return changed
