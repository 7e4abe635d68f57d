"""Language modelling on local UTF-8 text files (task 'text'): the files are cut into chunks of
at most seq_len - 1 bytes, each a record with an empty prompt, so the loss covers every token."""
import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from selffb import errors
from selffb.data import builders
from selffb.tasks import seq

BATCH_KEYS, EVAL_KEYS = seq.BATCH_KEYS, seq.EVAL_KEYS
train_dataset, eval_batches = seq.train_dataset, seq.eval_batches
loss_fn, eval_sums, example_length = seq.loss_fn, seq.eval_sums, seq.example_length
SUPPORTS_SELFTRAIN = False
DATA_KEYS = ('data.text.', 'data.seq_len')  # What makes the records (seq_len cuts the chunks).


def batch_format(config):
  del config
  return seq.SequenceFormat()


def _chunks(text, size):
  """Cuts on character boundaries, so every chunk of at most `size` bytes is valid UTF-8."""
  chunks, piece, used = [], [], 0
  for ch in text:
    n = len(ch.encode('utf-8'))
    if used + n > size:
      chunks.append(''.join(piece))
      piece, used = [], 0
    piece.append(ch)
    used += n
  chunks.append(''.join(piece))
  return chunks


class LocalText(tfds.core.GeneratorBasedBuilder):
  """UTF-8 text files cut into chunks of at most `chunk_bytes` bytes; loss on every token."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'prompt': tfds.features.Text(), 'answer': tfds.features.Text(), 'digits': np.int32}))

  def _split_generators(self, dl_manager):
    del dl_manager
    s = builders.settings_of(self)
    chunks = [c for path in s['files'] for c in _chunks(read_text_file(path), s['chunk_bytes'])]
    order = np.random.default_rng(s['seed']).permutation(len(chunks))
    n_val = max(1, int(round(len(chunks) * s['validation_fraction'])))
    if len(chunks) - n_val < 1:
      raise errors.InputError(f'text files {s["files"]} give {len(chunks)} chunk(s) of '
                              f'{s["chunk_bytes"]} bytes: too little for a train and a '
                              'validation split.')
    pick = lambda idx: [chunks[i] for i in sorted(idx)]
    return {'train': self._generate_examples(pick(order[n_val:])),
            'validation': self._generate_examples(pick(order[:n_val]))}

  def _generate_examples(self, chunks):
    for i, chunk in enumerate(chunks):
      yield i, {'prompt': '', 'answer': chunk, 'digits': 0}


def read_text_file(path):
  with open(path, 'rb') as f:
    raw = f.read()
  if not raw.strip():
    raise errors.InputError(f'text file {path} is empty; remove it from config.data.text.paths.')
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise errors.InputError(f'text file {path} is not UTF-8 ({e}); convert it (e.g. iconv -t '
                            'utf-8) or remove it from config.data.text.paths.') from None


def text_files(paths):
  """The files that config.data.text.paths (comma-separated paths or globs) names."""
  files = []
  for pattern in [p.strip() for p in paths.split(',') if p.strip()]:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise errors.InputError(f'config.data.text.paths: {pattern!r} matches no file.')
    files.extend(matched)
  if not files:
    raise errors.InputError("config.data.task='text' needs config.data.text.paths (files or "
                            'globs).')
  return files


def load_splits(config, data_dir):
  """{'train', 'validation'} chunks of the text files; every file is checked before writing."""
  c = config.data
  files = text_files(c.text.paths)
  for path in files:
    read_text_file(path)  # Fail on a bad file before anything is written.
  stamp = ''.join(f'{p}:{os.path.getsize(p)}:{os.path.getmtime(p)}' for p in files)
  if c.seq_len < 2:
    raise ValueError("config.data.task='text' needs config.data.seq_len >= 2 (chunk size).")
  settings = dict(files=files, chunk_bytes=c.seq_len - 1,
                  validation_fraction=c.text.validation_fraction, seed=config.seed)
  return builders.build(LocalText, settings, data_dir, stamp)


def config_problems(config):
  d, found = config.data, []
  try:
    text_files(d.text.paths)
  except ValueError as e:
    found.append(str(e))
  if d.seq_len < 2:
    found.append("config.data.task='text' needs config.data.seq_len >= 2.")
  return found
