"""The language-modelling pipeline (grain): documents -> tokens (bos + text + eos) -> rows of
`seq_len` inputs and targets, packed several documents to a row or padded one to a row, ->
batches. Each host reads its own documents (`process_index::process_count`) and reshuffles them
every epoch by seed; the iterator state is a small dict that the checkpoint keeps, so a resumed
run sees exactly the batches an uninterrupted run would have.

A packed row carries `segments` (1, 2, ... per document, 0 for padding) and `positions` that
restart at 0 for each document (-1 for padding); the model keeps attention inside a segment.
A document longer than seq_len + 1 tokens is split into pieces of seq_len + 1 tokens that share
their boundary token (so every token is a target once; each piece is its own document),
truncated to its first piece, or dropped (`long_docs`).
"""
import dataclasses

import grain
import grain.experimental as grain_exp
import numpy as np

from selffb import errors
from selffb.data import pipeline

LONG_DOCS = ('split', 'truncate', 'drop')


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """How documents become rows."""
  seq_len: int
  pack: bool = True
  long_docs: str = 'split'


def pieces(tokens, spec):
  """A document's token array (bos + text + eos) as row elements under the long-docs policy."""
  n = spec.seq_len + 1
  if len(tokens) <= n:
    starts = [0]
  elif spec.long_docs == 'split':
    starts = range(0, len(tokens) - 1, spec.seq_len)
  elif spec.long_docs == 'truncate':
    starts = [0]
  else:
    return []
  out = []
  for s in starts:
    piece = tokens[s:s + n]
    out.append({'inputs': piece[:-1], 'targets': piece[1:],
                'loss_mask': np.ones(len(piece) - 1, np.float32)})
  return out


def long_doc_counts(source, tokenizer, spec, limit=10_000, chunk=256):
  """{'documents', 'long', 'pieces', 'dropped_tokens'} over the first `limit` documents of
  `source`: how many are longer than a row and what the policy makes of them."""
  counts = {'documents': 0, 'long': 0, 'pieces': 0, 'dropped_tokens': 0}
  n = min(len(source), limit)
  for start in range(0, n, chunk):
    docs = source.__getitems__(list(range(start, min(start + chunk, n))))
    for tokens in encode_docs(docs, tokenizer):
      counts['documents'] += 1
      if len(tokens) > spec.seq_len + 1:
        counts['long'] += 1
        made = pieces(tokens, spec)
        counts['pieces'] += len(made)
        counts['dropped_tokens'] += len(tokens) - 1 - sum(len(p['inputs']) for p in made)
  return counts


def encode_docs(docs, tokenizer):
  return [np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]]).astype(np.int32)
          for ids in tokenizer.encode_many(docs)]


class _Pieces(grain_exp.FlatMapTransform):
  """A chunk of documents' token arrays -> their row elements (grain restores a checkpoint
  mid-chunk by recomputing the chunk)."""
  max_fan_out = 1 << 30  # The iterator flat map does not bound it.

  def __init__(self, spec):
    self.spec = spec

  def flat_map(self, element):
    return [p for tokens in element for p in pieces(tokens, self.spec)]


def _pad_row(element, seq_len):
  n = len(element['inputs'])
  pad = lambda x, value: np.pad(x, (0, seq_len - n), constant_values=value)
  return {'inputs': pad(element['inputs'], 0), 'targets': pad(element['targets'], 0),
          'loss_mask': pad(element['loss_mask'], 0.0),
          'positions': pad(np.arange(n, dtype=np.int32), -1)}


def _packed_row(element):
  """grain's packed element -> a row: positions -1 and loss 0 on padding, segment ids kept."""
  seg = element['inputs_segment_ids'].astype(np.int32)
  return {'inputs': element['inputs'], 'targets': element['targets'],
          'loss_mask': element['loss_mask'] * (seg > 0),
          'positions': np.where(seg > 0, element['inputs_positions'], -1).astype(np.int32),
          'segments': seg}


def rows(source, tokenizer, spec, *, seed=0, shuffle=True, repeat=True, process_index=0,
         process_count=1, shuffle_window=0, read_chunk=64, threads=1, prefetch=16, bins=64):
  """A grain IterDataset of this host's rows (dicts of [seq_len] arrays)."""
  docs = grain.MapDataset.range(len(source))[process_index::process_count]
  if shuffle:
    docs = docs.shuffle(seed=seed)
  if repeat:
    docs = docs.repeat()
  read = lambda idx: encode_docs(source.__getitems__(idx.tolist()), tokenizer)
  ds = docs.batch(read_chunk).map(read).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
  ds = grain_exp.FlatMapIterDataset(ds, _Pieces(spec))
  if shuffle and shuffle_window > 1:  # Pieces of one long document stop arriving in order.
    ds = grain_exp.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
  if not spec.pack:
    return ds.map(lambda e: _pad_row(e, spec.seq_len))
  lengths = {'inputs': spec.seq_len, 'targets': spec.seq_len, 'loss_mask': spec.seq_len}
  ds = grain_exp.FirstFitPackIterDataset(ds, length_struct=lengths, num_packing_bins=bins,
                                         seed=seed, shuffle_bins=shuffle)
  return ds.map(_packed_row)


def train_batches(source, tokenizer, spec, batch_size, seed, process_index=0, process_count=1,
                  shuffle_window=0, workers=0, transform=None):
  """Endless batches of this host's `batch_size / process_count` rows, each passed through
  `transform(batch, rng)` if given (a generator seeded by the seed, the host and the batch's
  index, so resuming redraws nothing differently); with `workers` > 0 they are made by that
  many worker processes (grain's multiprocess prefetch)."""
  per_host = pipeline.host_rows(batch_size, process_count)
  if len(source) < process_count:
    raise ValueError(f'the training split has {len(source)} documents, fewer than the '
                     f'{process_count} hosts reading it.')
  ds = rows(source, tokenizer, spec, seed=seed, process_index=process_index,
            process_count=process_count, shuffle_window=shuffle_window,
            bins=max(per_host, 8)).batch(per_host, drop_remainder=True)
  if transform is not None:
    ds = ds.random_map(transform, seed=seed * 65_537 + process_index)
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def eval_batches(source, tokenizer, spec, batch_size, max_rows):
  """Up to `max_rows` rows of a split in file order, as batches of `batch_size` with `valid`
  marking real rows (the last batch is filled with copies of its first row)."""
  it = iter(rows(source, tokenizer, spec, shuffle=False, repeat=False))  # Fixed bins: the
  made = [row for _, row in zip(range(max_rows), it)]  # same rows at any eval batch size.
  if not made:
    raise errors.InputError('the validation split gives no rows (every document dropped as '
                            "longer than seq_len? set config.data.text.long_docs='split').")
  batches = []
  for start in range(0, len(made), batch_size):
    chunk = pipeline.pad_rows(made[start:start + batch_size], batch_size)
    batch = {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}
    batch['valid'] = (np.arange(batch_size) < len(made) - start).astype(np.float32)
    batches.append(batch)
  return batches
