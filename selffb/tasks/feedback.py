"""Fine-tuning from recorded feedback (task 'feedback', `--mode=finetune`): the JSONL records of
selffb/feedback/records.py as weighted decoder batches with preference terms.

A training example is a *unit* of two rows, so the responses of a preference pair (or a
correction and the response it replaced) always share a batch: rows 2i and 2i + 1 of a batch
are unit i. Single rows are packed two to a unit (a lone last one beside a dead filler row).
config.data.batch_size counts rows.

The loss adds, each over its own count in the whole batch (`denominators`):
  - the feedback loss (feedback/losses.py, any arm) on rows of weight > 0, each row's tokens
    weighted by its weight; the row's signal is the batch's `rating` source of F;
  - weight * DPO on pair units, against `ref_logp`: the rows' log-probabilities under the
    starting parameters, computed once by the finetune mode (`with_reference`);
  - weight * the KTO-style loss on rows labelled under label_loss='kto'.
Unweighted CE over every response token is logged as `ce`. Validation CE is on the responses
the feedback prefers (signal > 0.5). Position ids follow the base task's format (no shift).
"""
import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from selffb import errors
from selffb import metrics
from selffb.data import pipeline
from selffb.feedback import losses
from selffb.feedback import preference
from selffb.feedback import records
from selffb.tasks import addition
from selffb.tasks import classify
from selffb.tasks import feedback_before_after
from selffb.tasks import lm
from selffb.tasks import mlm
from selffb.tasks import ner
from selffb.tasks import pairs
from selffb.tasks import seq
from selffb.tasks import strings

BATCH_KEYS = ('inputs', 'targets', 'positions', 'loss_mask', 'rating', 'weight', 'pair', 'kto',
              'ref_logp') + seq.SOURCE_KEYS
EVAL_KEYS = seq.EVAL_KEYS
ROW_KEYS = ('inputs', 'targets', 'positions', 'response_mask') + seq.SOURCE_KEYS  # row_logps'.
DATA_KEYS = ('data.feedback.', 'finetune.')
SUPPORTS_SELFTRAIN, SUPPORTS_FINETUNE = False, True
eval_sums = seq.eval_sums
# --mode=finetune's hooks: paths, with_reference, row_logps (ROW_KEYS) and the report's three.
report_rows, summarize_report = feedback_before_after.rows, feedback_before_after.summarize
report_markdown = feedback_before_after.markdown
# The tasks whose prompts and sequence format records may take (config.data.feedback.base_task).
BASES = {'addition': addition, 'text': lm, 'strings': strings, 'pairs': pairs, 'mlm': mlm,
         'classify': classify, 'ner': ner}


def _base(config):
  """The base task module (its format and test splits), or None."""
  name = config.data.feedback.base_task
  if not name:
    return None
  if name not in BASES:
    raise ValueError(f'config.data.task={name!r}; choose one of {tuple(BASES)}.')
  return BASES[name]


def batch_format(config):
  base = _base(config)
  fmt = base.batch_format(config) if base else seq.SequenceFormat()
  return dataclasses.replace(fmt, shift=0)  # The reference and the policy see the same ids.


def paths(config, data_dir):
  """(train file, validation file or ''): config.data.feedback's, or the generated example's,
  named by a hash of what makes it (the seed, the starting run, the example and base task keys,
  the scale, labels and sampling settings), so a change writes a new one."""
  c = config.data.feedback
  if c.train_path:
    return os.path.expanduser(c.train_path), os.path.expanduser(c.validation_path)
  flat = metrics.flatten(config.to_dict(), '.')
  base = f'data.{c.base_task}.'
  made_of = {k: v for k, v in flat.items() if k.startswith(
      ('seed', 'sample.', 'data.feedback.example_', 'data.feedback.rating_scale',
       'data.feedback.labels', base))}
  made_of['init'] = os.path.abspath(config.finetune.init_workdir) if (
      config.finetune.init_workdir) else ''
  digest = hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode())
  return os.path.join(data_dir, 'feedback_example', digest.hexdigest()[:12] + '.jsonl'), ''


def example_length(unit, fmt=None):
  """Input tokens of the unit's longer row (bos + prompt + response; bytes of UTF-8), or in a
  seq2seq layout its longer source or target."""
  return max(seq.example_length({'prompt': r['prompt'].encode(),
                                 'answer': r['response'].encode()}, fmt) for r in unit['rows'])


def _read(path, config):
  """(groups, problems) of one file; too-long records are problems like malformed ones."""
  c, rules, groups = config.data.feedback, records.Rules.from_config(config.data.feedback), []
  limit, fmt = config.model.max_len, batch_format(config)

  def accept(line, record):
    try:  # Prompts in another layout than the base task's (the starting run's) would train
      fmt.check_prompt(record['prompt'])  # the model on text it never saw: refused, even on skip.
    except errors.InputError as e:
      raise records.RecordFileError(
          f'{path}: line {line}: {e} The records must use the prompt layout of config.data.'
          f'feedback.base_task={c.base_task!r} (data.{c.base_task}.* keys), as the starting run '
          'did; rewrite the file in that layout.') from None
    got = records.convert(line, record, rules)
    longest = max(example_length({'rows': rows}) for rows, _ in got)
    if longest > limit:
      return (f'prompt + response need {longest} tokens, over config.model.max_len={limit}; '
              'shorten the record or raise the model length')
    groups.extend(got)
    return None

  count, problems = records.read(path, rules, c.errors, accept)
  if problems:
    logging.warning('%s: skipped %d of %d records (config.data.feedback.errors=skip):\n%s', path,
                    len(problems), count + len(problems), records.describe(problems))
  logging.info('%s: %d records -> %d rows, %d preference pairs', path, count,
               sum(len(rows) for rows, pair in groups if not pair), sum(p for _, p in groups))
  return groups


def _hold_out(groups, fraction, seed):
  """(train, validation) groups, holding out `fraction` of the distinct prompts (a prompt's
  records all fall on one side)."""
  prompts = sorted({rows[0]['prompt'] for rows, _ in groups})
  n_val = int(round(len(prompts) * fraction))
  if not 0 < n_val < len(prompts):
    raise errors.InputError(f'{len(prompts)} distinct prompts cannot be split by config.data.'
                            f'feedback.validation_fraction={fraction}; give more records or a '
                            'validation_path.')
  held = {prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))[:n_val]}
  return ([g for g in groups if g[0][0]['prompt'] not in held],
          [g for g in groups if g[0][0]['prompt'] in held])


def units(groups, training=False):
  """Groups -> units {'rows': (a, b), 'pair', 'live': (1, 0 or 1), 'ref_logp': (0, 0)}: pair and
  two-row groups as they are, single rows two to a unit. With `training`, rows that no loss term
  reads (weight 0, no kto, outside a pair) are left out."""
  used = lambda r: r['weight'] > 0 or r['kto'] != 0
  whole, singles = [], []
  for rows, pair in groups:
    kept = rows if pair or not training else tuple(r for r in rows if used(r))
    if pair or len(kept) == 2:
      whole.append((kept, pair))
    else:
      singles.extend(kept)
  out = [{'rows': tuple(rows), 'pair': int(pair), 'live': (1, 1), 'ref_logp': (0.0, 0.0)}
         for rows, pair in whole]
  for i in range(0, len(singles), 2):
    two = singles[i:i + 2]
    out.append({'rows': (two[0], two[-1]), 'pair': 0, 'live': (1, int(len(two) == 2)),
                'ref_logp': (0.0, 0.0)})
  return out


def load_splits(config, data_dir):
  """'train' (units that train), 'train_all' (every train row, for the report), 'validation',
  and the base task's test_* splits."""
  c = config.data.feedback
  train_path, val_path = paths(config, data_dir)
  train = _read(train_path, config)
  if val_path:
    val = _read(val_path, config)
  else:
    train, val = _hold_out(train, c.validation_fraction, config.seed)
  if not units(train, training=True):
    raise errors.InputError(f'{train_path}: no training record has a loss to train on (every '
                            'row has weight 0); check config.data.feedback.')
  splits = {'train': pipeline.ListSource(units(train, training=True)),
            'train_all': pipeline.ListSource(units(train)),
            'validation': pipeline.ListSource(units(val))}
  base = _base(config)
  if base:
    splits.update({k: v for k, v in base.load_splits(config, data_dir).items()
                   if k.startswith('test_')})
  return splits


def with_reference(source, logp):
  """`source`'s units with `ref_logp` set from per-row log-probabilities (2 per unit)."""
  logp = np.asarray(logp, np.float32).reshape(-1, 2)
  return pipeline.ListSource([{**u, 'ref_logp': tuple(float(x) for x in lp)}
                              for u, lp in zip(pipeline.read_all(source), logp)])


def encode_units(units_, tokenizer, seq_len, fmt):
  """Units -> a batch of 2 rows each: the decoder-LM keys (seq.encode_batch) plus per row
  `rating` (the signal), `weight`, `pair`, `kto`, `ref_logp` and `live`."""
  rows = [r for u in units_ for r in u['rows']]
  batch = seq.encode_batch([{'prompt': r['prompt'], 'answer': r['response'], 'digits': 0}
                            for r in rows], tokenizer, seq_len, fmt)
  del batch['digits']
  live = np.asarray([x for u in units_ for x in u['live']], np.float32)
  batch['loss_mask'] *= live[:, None]
  column = lambda key: np.asarray([r[key] for r in rows], np.float32) * live
  batch.update(rating=column('signal'), weight=column('weight'), kto=column('kto'), live=live,
               pair=np.repeat([u['pair'] for u in units_], 2).astype(np.float32),
               ref_logp=np.asarray([x for u in units_ for x in u['ref_logp']], np.float32))
  return batch


def train_dataset(source, tokenizer, seq_len, batch_size, seed, process_index=0,
                  process_count=1, fmt=seq.SequenceFormat()):
  encode = lambda chunk, index, rows: encode_units(chunk, tokenizer, seq_len, fmt)
  return pipeline.train_dataset(source, encode, batch_size // 2, seed, process_index,
                                process_count)


def eval_batches(source, tokenizer, batch_size, fmt=seq.SequenceFormat()):
  """Every unit, batch_size // 2 a batch, padded to the split's longest. `response_mask` covers
  every live response (row_logps); `loss_mask` and `valid` only the preferred ones (eval_sums)."""
  all_units, per = list(pipeline.read_all(source)), batch_size // 2
  length = max(example_length(u, fmt) for u in all_units)
  batches = []
  for start in range(0, len(all_units), per):
    chunk = all_units[start:start + per]
    batch = encode_units(pipeline.pad_rows(chunk, per), tokenizer, length, fmt)
    real = np.repeat(np.arange(per) < len(chunk), 2).astype(np.float32) * batch['live']
    batch['response_mask'] = batch['loss_mask'] * real[:, None]
    batch['valid'] = real * (batch['rating'] > 0.5)
    batch['loss_mask'] = batch['loss_mask'] * batch['valid'][:, None]
    batches.append(batch)
  return batches


def denominators(batch):
  """The whole batch's counts the loss terms are averaged over (microbatches add up)."""
  return {'tokens': jnp.sum(batch['loss_mask']),
          'sft': jnp.sum(batch['loss_mask'] * batch['weight'][:, None]),
          'pairs': jnp.sum(batch['pair']) / 2, 'kto': jnp.sum(jnp.abs(batch['kto']))}


def loss_fn(outputs, batch, denominator, step, *, fb):
  """The weighted feedback loss + preference_weight * (DPO + KTO-style), and their metrics."""
  logits, targets, mask = outputs['logits'], batch['targets'], batch['loss_mask']
  sft, aux = losses.feedback_loss(
      logits, targets, mask * batch['weight'][:, None], loss=fb.loss, weights=dict(fb.weights),
      gamma=fb.gamma, batch_scores={'rating': batch['rating']}, denominator=denominator['sft'],
      arm_weight=fb.arm_weight(step))
  logp_BxT = aux['logp']  # Per token, unweighted: one log-softmax for every term.
  tokens = jnp.maximum(denominator['tokens'], 1)
  correct = aux['correct'] * mask
  seq_B = jnp.sum(logp_BxT * mask, axis=-1)
  pol, ref = seq_B.reshape(-1, 2), batch['ref_logp'].reshape(-1, 2)
  pair_U, pairs = batch['pair'][0::2], jnp.maximum(denominator['pairs'], 1)
  dpo_U, margin_U = preference.dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], fb.beta)
  active = jnp.abs(batch['kto'])
  z0 = preference.kto_reference_point(seq_B, batch['ref_logp'], active)
  kto_B = preference.kto_loss(seq_B, batch['ref_logp'], batch['kto'], fb.beta, z0,
                              fb.kto_desirable, fb.kto_undesirable)
  dpo = jnp.sum(dpo_U * pair_U) / pairs
  kto = jnp.sum(kto_B * active) / jnp.maximum(denominator['kto'], 1)
  metrics = {'ce': -jnp.sum(logp_BxT * mask) / tokens, 'accuracy': jnp.sum(correct) / tokens,
             'mean_f': aux['mean_f'], 'blend': aux['blend'], 'sft': sft, 'dpo': dpo, 'kto': kto,
             'pref_accuracy': jnp.sum((margin_U > 0) * pair_U) / pairs,
             'reward_margin': jnp.sum(margin_U * pair_U) / pairs}
  return sft + fb.preference_weight * (dpo + kto), metrics


def row_logps(outputs, batch):
  """Per row: the response's summed log-probability and its token count."""
  mask = batch['response_mask']
  return {'logp': preference.sequence_logprob(outputs['logits'], batch['targets'], mask),
          'tokens': jnp.sum(mask, axis=-1)}


def config_problems(config):
  """Problems of config.data.feedback (beyond Rules, checked for every config) and of the batch
  sizes the units need."""
  c, d, found = config.data.feedback, config.data, []
  need = lambda ok, message: None if ok else found.append(message)
  need(c.errors in records.ERRORS, f'config.data.feedback.errors={c.errors!r}; choose one of '
       f'{records.ERRORS}.')
  for key in ('train_path', 'validation_path'):
    path = getattr(c, key)
    need(not path or os.path.isfile(os.path.expanduser(path)),
         f'config.data.feedback.{key}={path!r} does not exist.')
  base = None
  if c.base_task == 'feedback':
    found.append("config.data.feedback.base_task='feedback' is this task; name the task the "
                 "records' prompts come from (e.g. 'addition'), or '' for plain text.")
  else:
    try:
      base = _base(config)
    except ValueError as e:
      found.append(f'config.data.feedback.base_task: {e}'.replace('config.data.task=', ''))
  if base is not None:
    found.extend(base.config_problems(config))
    found.extend(getattr(base, 'example_problems', lambda c: [])(config))
  need(c.train_path or (base is not None and hasattr(base, 'example_feedback')),
       'config.data.feedback.train_path is empty, so an example would be generated, but '
       f'base_task={c.base_task!r} writes none; give a JSONL file or base_task=\'addition\'.')
  accum, hosts = max(config.train.grad_accum_steps, 1), jax.process_count()
  need(d.batch_size % (2 * accum) == 0 and d.batch_size % (2 * hosts) == 0
       and d.eval_batch_size % 2 == 0,
       f'task feedback trains units of 2 rows: config.data.batch_size={d.batch_size} must be '
       f'divisible by 2 * grad_accum_steps={2 * accum} and by 2 * the {hosts} host(s), and '
       f'eval_batch_size={d.eval_batch_size} even.')
  need(not (c.label_loss == 'kto' and accum > 1), "config.data.feedback.label_loss='kto' takes "
       'its reference point from the whole batch; it cannot split into grad_accum_steps='
       f'{accum} microbatches. Use grad_accum_steps=1 or label_loss=\'weighted\'.')
  need(c.train_path or not c.validation_path, 'config.data.feedback.validation_path is given '
       'without train_path; give both, or neither for the generated example.')
  need(not config.feedback.weights.verifier, 'config.feedback.weights.verifier > 0, but recorded'
       ' feedback has no verifier scores; its signal is the rating source.')
  return found
