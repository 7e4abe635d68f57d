"""Local CoNLL files for named-entity recognition: the CoNLL-2003 four-column format, one
`word POS chunk NER` line per word, a blank line between sentences, `-DOCSTART-` lines skipped.

The tag set comes from the training file ('O' first, then by entity type, B- before I-); a
validation or test tag the training file never has is an error naming the file and line, as is a
malformed line. IOB1 (the original eng.* files) and IOB2 tags both read; the report's entity
spans follow conlleval for either.
"""
import os
import re

from selffb import errors

SPLIT_FILES = {'train': ('eng.train', 'train.txt'), 'validation': ('eng.testa', 'valid.txt'),
               'test': ('eng.testb', 'test.txt')}
_TAG = re.compile(r'^(O|[BI]-\S+)$')
COLUMNS = 4


def read(path):
  """[(words, tags, first line number)] of the sentences of the CoNLL file `path`."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise errors.InputError(f'CoNLL file {path}: {e.strerror}.') from None
  sentences, words, tags, first = [], [], [], 0
  for number, line in enumerate(raw.split(b'\n'), 1):
    try:
      fields = line.decode('utf-8').split()
    except UnicodeDecodeError as e:
      raise errors.InputError(f'{path}:{number}: not valid UTF-8 ({e}).') from None
    if not fields or fields[0] == '-DOCSTART-':
      if words:
        sentences.append((words, tags, first))
      words, tags = [], []
      continue
    if len(fields) != COLUMNS:
      raise errors.InputError(
          f'{path}:{number}: {len(fields)} column(s) {line.decode("utf-8").strip()!r}; a CoNLL '
          'line is four: word POS chunk NER (a blank line between sentences).')
    if not _TAG.match(fields[-1]):
      raise errors.InputError(f'{path}:{number}: NER tag {fields[-1]!r} is not O, B-TYPE or '
                              'I-TYPE.')
    if not words:
      first = number
    words.append(fields[0])
    tags.append((fields[-1], number))
  if words:
    sentences.append((words, tags, first))
  if not sentences:
    raise errors.InputError(f'CoNLL file {path} holds no sentence.')
  return sentences


def tag_names(sentences):
  """The tag set of a split's sentences: 'O', then by type, B- before I-."""
  found = {tag for _, tags, _ in sentences for tag, _ in tags} | {'O'}
  rest = sorted(found - {'O'}, key=lambda t: (t[2:], t[0]))
  return ['O'] + rest


def records(sentences, labels, path):
  """{'words', 'tags'} records, tags as indices into `labels`; a tag outside them is an error
  naming `path` and its line."""
  index = {name: i for i, name in enumerate(labels)}
  out = []
  for words, tags, _ in sentences:
    for tag, number in tags:
      if tag not in index:
        raise errors.InputError(f'{path}:{number}: tag {tag!r} is not in the training file\'s '
                                f'tag set {labels}.')
    out.append({'words': words, 'tags': [index[tag] for tag, _ in tags]})
  return out


def split_paths(c):
  """{'train', 'validation', 'test'} paths from config.data.labelled (`c`): each
  `<split>_path`, else the file in `c.conll_dir` with a known name (eng.train / eng.testa /
  eng.testb or train.txt / valid.txt / test.txt)."""
  out = {}
  for split, names in SPLIT_FILES.items():
    path = os.path.expanduser(c[f'{split}_path'])
    if not path and c.conll_dir:
      there = [os.path.join(os.path.expanduser(c.conll_dir), n) for n in names]
      path = next((p for p in there if os.path.isfile(p)), '')
      if not path:
        raise errors.InputError(f'config.data.labelled.conll_dir={c.conll_dir!r} has no {split} '
                                f'file (looked for {" or ".join(names)}): set '
                                f'config.data.labelled.{split}_path.')
    out[split] = path
  return out


def uses_files(c):
  """Whether config.data.labelled (`c`) names local CoNLL files."""
  return bool(c.conll_dir or c.train_path or c.validation_path or c.test_path)


def problems(c):
  """Config problems of local CoNLL files: all three splits named, each an existing file."""
  if not uses_files(c):
    return []
  found = []
  for split in SPLIT_FILES:
    path = os.path.expanduser(c[f'{split}_path'])
    if path and not os.path.isfile(path):
      found.append(f'config.data.labelled.{split}_path={path!r} is not a file.')
    elif not path and not c.conll_dir:
      found.append(f'config.data.labelled.{split}_path is empty: local CoNLL files need all '
                   'three (train, validation, test) or config.data.labelled.conll_dir.')
  if c.conll_dir and not os.path.isdir(os.path.expanduser(c.conll_dir)):
    found.append(f'config.data.labelled.conll_dir={c.conll_dir!r} is not a directory.')
  return found


def load(c):
  """({split: records}, the training file's tag names) of the files config.data.labelled names."""
  paths = split_paths(c)
  train = read(paths['train'])
  labels = tag_names(train)
  out = {'train': records(train, labels, paths['train'])}
  for split in ('validation', 'test'):
    out[split] = records(read(paths[split]), labels, paths[split])
  return out, labels
