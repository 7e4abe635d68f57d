"""grain pipelines over random-access sources (tfds data sources, or records in memory).

The training pipeline reads whole batches of indices at once (`__getitems__`), which is ~10x
cheaper than per-record reads, and its iterator state is a small dict saved with each
checkpoint. What a batch looks like is the task's business: the pipeline hands each host's
records to the task's `encode` function.
"""
import bisect

import grain


class ListSource:
  """Records in memory with the random-access interface of a tfds data source."""

  def __init__(self, records):
    self.records = list(records)

  def __len__(self):
    return len(self.records)

  def __getitems__(self, indices):
    return [self.records[i] for i in indices]


MIXINGS = ('pooled', 'rounds')  # config.selftrain.mixing: see mix and mix_rounds.


class WeightedSource:
  """Sources laid end to end, source i taking `counts[i]` indices and repeating its own records
  over them: an epoch holds exactly those counts, so each source's share is fixed (mix: the base
  once, then its extra records repeated; mix_rounds: the rounds' weighted shares)."""

  def __init__(self, parts, counts):
    self.parts, self.counts = parts, counts
    self.starts = [sum(counts[:i]) for i in range(len(counts))]

  def __len__(self):
    return sum(self.counts)

  def __getitems__(self, indices):
    wanted = {}
    for pos, i in enumerate(indices):
      part = bisect.bisect_right(self.starts, i) - 1
      wanted.setdefault(part, []).append((pos, (i - self.starts[part]) % len(self.parts[part])))
    out = [None] * len(indices)
    for part, pairs in wanted.items():
      for (pos, _), rec in zip(pairs, self.parts[part].__getitems__([j for _, j in pairs])):
        out[pos] = rec
    return out


def mix(base, extra_records, share, cap):
  """A source where about `share` of the examples are extra records (the newest `cap`)."""
  if cap:
    extra_records = extra_records[-cap:]
  if not extra_records or share <= 0:
    return base
  repeats = max(1, round(share / (1 - share) * len(base) / len(extra_records)))
  return WeightedSource([base, ListSource(extra_records)],
                        [len(base), len(extra_records) * repeats])


def weighted(parts, shares):
  """A WeightedSource where part i holds `shares[i]` of every epoch (shares sum to 1), the epoch
  long enough that every record of every part appears at least once."""
  length = max(-(-len(p) // s) for p, s in zip(parts, shares))
  return WeightedSource(parts, [round(length * s) for s in shares])


def mix_rounds(base, rounds, newest_share, base_weight):
  """Lee et al.'s mix: `newest_share` of the examples from the newest round's records (the last
  list of `rounds`), the rest spread over `base` (weight `base_weight`) and each older round
  (weight 1). Rounds with no records drop out and the others' shares grow to fill theirs."""
  *older, newest = rounds if rounds else [[]]
  old = [(base, base_weight)] + [(ListSource(r), 1.0) for r in older if r]
  total = sum(w for _, w in old)
  parts = [(src, w / total * (1 - newest_share if newest else 1)) for src, w in old]
  if newest and newest_share > 0:
    parts.append((ListSource(newest), newest_share))
  if len(parts) == 1:
    return base
  return weighted([p for p, _ in parts], [s for _, s in parts])


def read_all(source, chunk=4096):
  for start in range(0, len(source), chunk):
    yield from source.__getitems__(list(range(start, min(start + chunk, len(source)))))


def pad_rows(rows, size):
  """`rows` (a list) filled to `size` with copies of its first: every batch gets one shape."""
  return list(rows) + [rows[0]] * (size - len(rows))


def host_rows(batch_size, process_count):
  """The rows of each global batch one host makes."""
  if batch_size % process_count:
    raise ValueError(f'config.data.batch_size={batch_size} is not divisible by the '
                     f'{process_count} hosts.')
  return batch_size // process_count


def train_dataset(source, encode, batch_size, seed, process_index=0, process_count=1):
  """An endless, per-epoch reshuffled grain dataset of this host's share of each global batch:
  `encode(records, batch_index, rows)` makes it from the records, `rows` being the slice of the
  global batch this host holds (so per-batch randomness can agree across hosts)."""
  per_host = host_rows(batch_size, process_count)
  if len(source) == 0:
    raise ValueError('the training split is empty.')
  rows = slice(process_index * per_host, (process_index + 1) * per_host)

  def load(index, indices):
    return encode(source.__getitems__(indices[rows].tolist()), index, rows)

  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat().batch(batch_size)
  return ds.map_with_index(load)


def make_iterator(dataset, prefetch=8):
  """A checkpointable iterator over a task's training dataset (a grain MapDataset read ahead by
  a thread, or an IterDataset, which reads ahead itself)."""
  if isinstance(dataset, grain.IterDataset):
    return iter(dataset)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                         prefetch_buffer_size=prefetch)))
