"""Prompt -> answer records as decoder batches, shared by the tasks that train a decoder LM.

A record is `{'prompt': bytes, 'answer': bytes, 'digits': int}`; its sequence is bos + prompt +
answer (+ eos if the format has one), shifted by one into inputs and targets, with the loss on
the answer (and eos). Padding has position -1.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from selffb.data import pipeline
from selffb.feedback import losses
from selffb.feedback import signals

SOURCE_KEYS = ('source', 'source_positions')  # Only in seq2seq batches (an encoder-decoder's).
BATCH_KEYS = ('inputs', 'targets', 'positions', 'loss_mask') + signals.BATCH_SOURCES + SOURCE_KEYS
EVAL_KEYS = ('inputs', 'targets', 'positions', 'loss_mask', 'valid') + SOURCE_KEYS


@dataclasses.dataclass(frozen=True)
class SequenceFormat:
  """How a record becomes a token sequence: does the answer end with eos, how do position ids
  run (0, 1, 2, ... here; a task may subclass), and how far may training shift them: one random
  s in [0, shift] per sequence is added to every id above 0. With `seq2seq` (set by setup for a
  model kind with SEQ2SEQ) bos + prompt is the source and bos + answer the decoder's sequence,
  whose ids continue from the prompt's last id as a decoder-only model's would (so in the
  aligned layout the token that writes answer digit i has operand digit i's id)."""
  eos: bool = True
  shift: int = 0
  seq2seq: bool = False

  def position_ids(self, tokens, tokenizer):
    """Ids for a token sequence that starts with bos."""
    del tokenizer
    return np.arange(len(tokens), dtype=np.int32)

  def answer_length(self, prompt):
    """Tokens of the answer to `prompt` when answers have a known length (no eos), else None."""
    del prompt
    return None

  def check_prompt(self, prompt):
    """Raises errors.InputError for a prompt this format cannot continue (any text can here)."""
    del prompt


def encode_batch(records, tokenizer, seq_len, fmt=SequenceFormat(), shifts=None):
  """Records -> {'inputs', 'targets', 'positions', 'loss_mask', 'digits'}, right-padded to seq_len.

  `shifts` (one per record) offset the position ids above 0.
  """
  if fmt.seq2seq:
    return _encode_seq2seq(records, tokenizer, seq_len, fmt, shifts)
  n = len(records)
  inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  targets = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  positions = np.full((n, seq_len), -1, np.int32)
  mask = np.zeros((n, seq_len), np.float32)
  for i, r in enumerate(records):
    prompt, answer = tokenizer.encode(r['prompt']), tokenizer.encode(r['answer'])
    tokens = np.concatenate([[tokenizer.bos_id], prompt, answer] +
                            ([[tokenizer.eos_id]] if fmt.eos else [])).astype(np.int32)
    if len(tokens) - 1 > seq_len:
      raise ValueError(f'an example of {len(tokens) - 1} tokens exceeds seq_len={seq_len}; '
                       'raise config.data.seq_len (0 fits the longest training example).')
    ids = fmt.position_ids(tokens, tokenizer)[:-1]
    if shifts is not None:
      ids = np.where(ids > 0, ids + shifts[i], ids)
    inputs[i, :len(tokens) - 1] = tokens[:-1]
    targets[i, :len(tokens) - 1] = tokens[1:]
    positions[i, :len(tokens) - 1] = ids
    mask[i, len(prompt):len(tokens) - 1] = 1.0
  digits = np.asarray([r['digits'] for r in records], np.int32)
  return {'inputs': inputs, 'targets': targets, 'positions': positions, 'loss_mask': mask,
          'digits': digits}


def _encode_seq2seq(records, tokenizer, seq_len, fmt, shifts):
  """encode_batch for an encoder-decoder: `source` (bos + prompt, ids by the format) and the
  decoder's `inputs` (bos + answer) -> `targets` (answer + eos if the format has one), both
  right-padded to seq_len; decoder ids start at the source's last id; the loss covers every
  target."""
  n, pad = len(records), tokenizer.pad_id
  out = {k: np.full((n, seq_len), v, np.int32) for k, v in (
      ('source', pad), ('source_positions', -1), ('inputs', pad), ('targets', pad),
      ('positions', -1))}
  mask = np.zeros((n, seq_len), np.float32)
  for i, r in enumerate(records):
    source = tokenizer.encode_prompt(r['prompt'])
    target = np.concatenate([[tokenizer.bos_id], tokenizer.encode(r['answer'])] +
                            ([[tokenizer.eos_id]] if fmt.eos else [])).astype(np.int32)
    if max(len(source), len(target) - 1) > seq_len:
      raise ValueError(f'an example of {len(source)} source and {len(target) - 1} target '
                       f'tokens exceeds seq_len={seq_len}; raise config.data.seq_len.')
    src_ids = fmt.position_ids(source, tokenizer)
    dec_ids = src_ids[-1] + np.arange(len(target) - 1)
    if shifts is not None:
      src_ids = np.where(src_ids > 0, src_ids + shifts[i], src_ids)
      dec_ids = np.where(dec_ids > 0, dec_ids + shifts[i], dec_ids)
    t = len(target) - 1
    out['source'][i, :len(source)], out['source_positions'][i, :len(source)] = source, src_ids
    out['inputs'][i, :t], out['targets'][i, :t] = target[:-1], target[1:]
    out['positions'][i, :t] = dec_ids
    mask[i, :t] = 1.0
  return {**out, 'loss_mask': mask,
          'digits': np.asarray([r['digits'] for r in records], np.int32)}


def example_length(record, fmt=None):
  """Tokens a record occupies in `inputs` (bos + prompt + answer; an eos is only a target); in
  a seq2seq layout, the longer of the source (bos + prompt) and the target (answer + eos)."""
  if fmt is not None and fmt.seq2seq:
    return max(1 + len(record['prompt']), len(record['answer']) + fmt.eos)
  return 1 + len(record['prompt']) + len(record['answer'])


def train_dataset(source, tokenizer, seq_len, batch_size, seed, process_index=0,
                  process_count=1, fmt=SequenceFormat()):
  """The training pipeline over `source`. Position shifts (if the format has them) are drawn per
  global batch from (seed, batch index), so they are reproducible, resume exactly and agree
  across hosts."""

  def encode(records, index, rows):
    shifts = None
    if fmt.shift:
      shifts = np.random.default_rng([seed, index]).integers(0, fmt.shift + 1, batch_size)[rows]
    return encode_batch(records, tokenizer, seq_len, fmt, shifts)

  return pipeline.train_dataset(source, encode, batch_size, seed, process_index, process_count)


def eval_batches(source, tokenizer, batch_size, fmt=SequenceFormat()):
  """A whole split as a list of batches, padded to the split's longest example. The last batch
  is padded with copies of the first record, marked by `valid` = 0."""
  records = list(pipeline.read_all(source))
  length = max(example_length(r, fmt) for r in records)
  batches = []
  for start in range(0, len(records), batch_size):
    chunk = records[start:start + batch_size]
    valid = np.zeros(batch_size, np.float32)
    valid[:len(chunk)] = 1.0
    batch = encode_batch(pipeline.pad_rows(chunk, batch_size), tokenizer, length, fmt)
    batch['valid'] = valid
    batches.append(batch)
  return batches


def loss_fn(outputs, batch, denominator, step, *, fb):
  """The feedback loss on the answer tokens at training step `step` (the blend's a_t depends on
  it); `fb` is a losses.FeedbackSpec."""
  scores = {k: batch[k] for k in signals.BATCH_SOURCES if k in batch}
  loss, aux = losses.feedback_loss(
      outputs['logits'], batch['targets'], batch['loss_mask'], loss=fb.loss,
      weights=dict(fb.weights), gamma=fb.gamma, batch_scores=scores, denominator=denominator,
      arm_weight=fb.arm_weight(step))
  return loss, {k: aux[k] for k in ('ce', 'accuracy', 'mean_f', 'blend')}


def eval_sums(outputs, batch):
  """Sums over a batch's valid rows: CE, correct tokens, tokens, exact sequences, sequences.

  A sequence is exact when every loss token is the argmax under teacher forcing, which is
  exactly when greedy decoding reproduces the answer.
  """
  logits_BxTxV = outputs['logits']
  mask_BxT = batch['loss_mask'] * batch['valid'][:, None]
  ce_BxT = -signals.target_logprob(logits_BxTxV, batch['targets'])
  correct_BxT = jnp.argmax(logits_BxTxV, -1) == batch['targets']
  exact_B = jnp.all(correct_BxT | (batch['loss_mask'] == 0), axis=-1) * batch['valid']
  return {'ce': jnp.sum(ce_BxT * mask_BxT), 'correct': jnp.sum(correct_BxT * mask_BxT),
          'tokens': jnp.sum(mask_BxT), 'exact': jnp.sum(exact_B),
          'sequences': jnp.sum(batch['valid'])}
