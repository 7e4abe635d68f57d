"""Text pairs from a prepared tensorflow-datasets dataset by name (task 'pairs'), e.g. a
translation dataset: each example's `source_key` text is the prompt (then `separator`) and its
`target_key` text the answer; a sequence-to-sequence task for the encoder-decoder, or a
prompt -> answer task for the decoder. Read TensorFlow-free with `tfds.data_source` from
ArrayRecord files in `config.data.pairs.data_dir`; nothing is downloaded. Both texts are cut
to `max_bytes` UTF-8 bytes (on a character boundary), so config.data.seq_len can be set from
it without reading the corpus through; a cut pair is a truncated translation, so set
max_bytes above the texts you care about.
"""
from selffb import errors
from selffb.data import named
from selffb.tasks import seq

BATCH_KEYS, EVAL_KEYS = seq.BATCH_KEYS, seq.EVAL_KEYS
train_dataset, eval_batches = seq.train_dataset, seq.eval_batches
loss_fn, eval_sums, example_length = seq.loss_fn, seq.eval_sums, seq.example_length
SUPPORTS_SELFTRAIN = False
DATA_KEYS = ('data.pairs.',)


def batch_format(config):
  del config
  return seq.SequenceFormat()


def cut(text, limit):
  """`text` cut to at most `limit` UTF-8 bytes without splitting a character."""
  return text.encode('utf-8')[:limit].decode('utf-8', 'ignore')


class PairSource:
  """A tfds data source's examples as prompt -> answer records, read on access."""

  def __init__(self, source, c):
    self.source, self.c = source, c

  def __len__(self):
    return len(self.source)

  def _record(self, example):
    text = lambda key: example[key].decode('utf-8') if isinstance(
        example[key], bytes) else str(example[key])
    source = cut(text(self.c.source_key), self.c.max_bytes) + self.c.separator
    return {'prompt': source.encode(), 'digits': 0,
            'answer': cut(text(self.c.target_key), self.c.max_bytes).encode()}

  def __getitems__(self, indices):
    return [self._record(x) for x in self.source.__getitems__(indices)]


def _open(c, split):
  source, features = named.open_split(c.tfds_name, split, c.data_dir,
                                      'config.data.pairs.tfds_name', False,
                                      'the config.data.pairs split', 'config.data.pairs.data_dir')
  missing = [k for k in (c.source_key, c.target_key) if k not in features]
  if missing:
    raise errors.InputError(f'{c.tfds_name!r} has no feature(s) {missing}; its features are '
                            f'{features}: set config.data.pairs.source_key/target_key.')
  return PairSource(source, c)


def load_splits(config, data_dir):
  """train, validation and test_<name> from the dataset's splits."""
  del data_dir  # The dataset lives where tfds prepared it.
  c = config.data.pairs
  return {'train': _open(c, c.train_split), 'validation': _open(c, c.validation_split),
          f'test_{c.test_name}': _open(c, c.test_split)}


def config_problems(config):
  c, d, found = config.data.pairs, config.data, []
  need = lambda ok, message: None if ok else found.append(message)
  need(c.tfds_name, "config.data.task='pairs' needs config.data.pairs.tfds_name.")
  need(c.max_bytes >= 1, f'config.data.pairs.max_bytes={c.max_bytes} must be >= 1.')
  fits = 2 + 2 * c.max_bytes + len(c.separator.encode())  # bos, source, separator, target, eos.
  need(d.seq_len >= fits, f"config.data.task='pairs' reads no corpus through for its longest "
       f'example: config.data.seq_len={d.seq_len} must be at least 2 + 2 * max_bytes + '
       f'the separator\'s bytes = {fits}.')
  return found
