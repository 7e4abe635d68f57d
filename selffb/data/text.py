"""Text documents for language modelling, from a prepared tfds dataset by name or from local
UTF-8 files (held in a pipeline.ListSource), as random-access sources of strings (`__len__`,
`__getitems__`).

Local files (`paths`) are read whole; each file's last `validation_fraction`, cut at a line
break, is its validation text, so one file gives both splits. Split files (`train_paths`,
`validation_paths`, optional `test_paths`: WikiText's wiki.train/valid/test.tokens) are the
splits as named. Either way `separator` cuts a file's text into documents: 'file' (the whole
file), 'blank_line' (blank lines between documents) or 'wikitext_heading' (a document starts at
each ` = Title = ` line; ` = = Section = = ` lines stay inside it). A named dataset's splits use
tfds's split syntax (`train[:95%]`).
"""
import glob
import os
import re

from absl import logging
import numpy as np

from selffb import errors
from selffb.data import named
from selffb.data import pipeline

# The feature holding the text, where a dataset's is not 'text'.
TEXT_FEATURES = {'pg19': 'book_text', 'ag_news_subset': 'description', 'cnn_dailymail': 'article',
                 'scientific_papers': 'article', 'billsum': 'text', 'wikipedia': 'text'}
ENCODING_ERRORS = ('error', 'replace')
SEPARATORS = ('file', 'blank_line', 'wikitext_heading')
_WIKITEXT_TITLE = re.compile(r'^ = [^=].* = ?$', re.M)
_BLANK_LINES = re.compile(r'\n(?:[ \t\r]*\n)+')


def decode(raw, errors_policy, where):
  """`raw` bytes (or str) as text; undecodable bytes raise InputError naming `where`, or become
  U+FFFD under 'replace'."""
  if isinstance(raw, str):
    return raw
  try:
    return bytes(raw).decode('utf-8', 'strict' if errors_policy == 'error' else 'replace')
  except UnicodeDecodeError as e:
    raise errors.InputError(f'{where} is not valid UTF-8 ({e}); convert it (e.g. iconv -t utf-8) '
                            "or set config.data.text.encoding_errors='replace'.") from None


class TfdsDocuments:
  """One feature of a tfds source's examples, decoded as text on access."""

  def __init__(self, source, feature, errors_policy, where):
    self.source, self.feature, self.errors, self.where = source, feature, errors_policy, where

  def __len__(self):
    return len(self.source)

  def __getitems__(self, indices):
    return [decode(x[self.feature], self.errors, f'{self.where} example {i}')
            for i, x in zip(indices, self.source.__getitems__(indices))]


def _is_glob(pattern):
  return glob.has_magic(pattern)


def text_files(paths, key='config.data.text.paths'):
  """The files `paths` (comma-separated paths or globs, ** recursive; the config key `key`)
  names."""
  files = []
  for pattern in [p.strip() for p in paths.split(',') if p.strip()]:
    matched = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                     if os.path.isfile(p))
    if not matched:
      raise errors.InputError(f'{key}: {pattern!r} matches no file.')
    files.extend(matched)
  if not files:
    raise errors.InputError("config.data.task='text' needs config.data.text.paths (files or "
                            'globs) or config.data.tfds_name.')
  return list(dict.fromkeys(files))


def _read_files(paths, errors_policy, key='config.data.text.paths'):
  """{path: text} of the files `paths` (config key `key`) names. A file named outright must hold
  text; empty files a glob matches (an empty __init__.py) are skipped, and counted in the log."""
  named = {os.path.expanduser(p.strip()) for p in paths.split(',')
           if p.strip() and not _is_glob(p)}
  texts, empty = {}, []
  for path in text_files(paths, key):
    with open(path, 'rb') as f:
      raw = f.read()
    if not raw.strip():
      if path in named:
        raise errors.InputError(f'text file {path} is empty; remove it from {key}.')
      empty.append(path)
      continue
    texts[path] = decode(raw, errors_policy, f'text file {path}')
  if empty:
    logging.info('text: skipped %d empty file(s) the globs matched (e.g. %s)', len(empty),
                 empty[0])
  if not texts:
    raise errors.InputError(f'{key}={paths!r} matches only empty files.')
  return texts


def split_tail(text, fraction):
  """(head, tail): the tail is about `fraction` of the text, starting after a line break where
  the text has one there."""
  cut = int(round(len(text) * (1 - fraction)))
  if 0 < cut < len(text) and text[cut - 1] != '\n':
    newline = text.find('\n', cut)
    cut = newline + 1 if 0 <= newline < len(text) - 1 else cut
  return text[:cut], text[cut:]


def documents(text, separator):
  """The non-blank documents of one file's `text` under the `separator` rule (SEPARATORS)."""
  if separator == 'file':
    parts = [text]
  elif separator == 'blank_line':
    parts = _BLANK_LINES.split(text)
  else:
    starts = [m.start() for m in _WIKITEXT_TITLE.finditer(text)]
    bounds = [0] + [i for i in starts if i] + [len(text)]
    parts = [text[a:b] for a, b in zip(bounds, bounds[1:])]
  return [p for p in parts if p.strip()]


def _stamp(prefix, files):
  return prefix + ';'.join(f'{p}:{os.path.getsize(p)}:{os.path.getmtime(p)}' for p in files)


def local_splits(t):
  """{'train', 'validation'} documents of config.data.text's (`t`) files (and 'test' from split
  files), and a fingerprint (paths, sizes, times, the rules) naming that text."""
  if t.train_paths:
    return _split_files(t)
  texts = _read_files(t.paths, t.encoding_errors)
  files = list(texts)
  train, validation = [], []
  for path in files:
    head, tail = split_tail(texts[path], t.validation_fraction)
    train += documents(head, t.separator)
    validation += documents(tail, t.separator)
  if not train or not validation:
    raise errors.InputError(f'config.data.text.paths {t.paths!r}: too little text for a train '
                            f'and a validation split at validation_fraction='
                            f'{t.validation_fraction}.')
  sep = '' if t.separator == 'file' else f'{t.separator};'
  stamp = _stamp(f'{t.validation_fraction};{sep}', files)
  return {'train': pipeline.ListSource(train), 'validation': pipeline.ListSource(validation)}, stamp


def _split_files(t):
  """local_splits of split files: `train_paths`, `validation_paths` and `test_paths` as named."""
  splits, files = {}, []
  for name in ('train', 'validation', 'test'):
    paths = t[f'{name}_paths']
    if not paths:
      continue
    key = f'config.data.text.{name}_paths'
    texts = _read_files(paths, t.encoding_errors, key)
    docs = [d for text in texts.values() for d in documents(text, t.separator)]
    if not docs:
      raise errors.InputError(f'{key}={paths!r} holds no document.')
    splits[name] = pipeline.ListSource(docs)
    files += list(texts)
  return splits, _stamp(f'splits;{t.separator};', files)


def tfds_splits(d):
  """{'train', 'validation'} TfdsDocuments of config.data.tfds_name (`d` is config.data), and
  a fingerprint naming that text."""
  t = d.text
  key, dir_key = 'config.data.tfds_name', 'config.data.data_dir'
  train, features = named.open_split(d.tfds_name, t.train_split, d.data_dir, key, t.prepare,
                                     'config.data.text.train_split', dir_key)
  feature = t.feature or TEXT_FEATURES.get(d.tfds_name.split('/')[0].split(':')[0], 'text')
  if feature not in features:
    raise errors.InputError(f'{d.tfds_name!r} has no feature {feature!r}; its features are '
                            f'{features}: set config.data.text.feature to the one with the text.')
  val_split = t.validation_split or 'validation'
  validation, _ = named.open_split(d.tfds_name, val_split, d.data_dir, key, False,
                                   'config.data.text.validation_split', dir_key)
  splits = {}
  for name, source, split in (('train', train, t.train_split),
                              ('validation', validation, val_split)):
    if not len(source):
      raise errors.InputError(f'{d.tfds_name!r} split {split!r} is empty: choose another in '
                              f'config.data.text.{name}_split.')
    splits[name] = TfdsDocuments(source, feature, t.encoding_errors,
                                 f'{d.tfds_name} {split} feature {feature!r}')
  return splits, f'tfds:{d.tfds_name}:{t.train_split}:{feature}:{os.path.expanduser(d.data_dir)}'


def sample_texts(source, max_lines, seed=0, chunk=256):
  """Documents of `source` in a seeded random order until they hold `max_lines` non-empty lines
  (what SentencePiece trains on, without reading a large corpus through)."""
  order = np.random.default_rng(seed).permutation(len(source))
  lines = 0
  for start in range(0, len(order), chunk):
    for doc in source.__getitems__(order[start:start + chunk].tolist()):
      yield doc
      lines += doc.count('\n') + 1
      if lines >= max_lines:
        return
