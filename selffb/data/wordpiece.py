"""A BERT WordPiece tokenizer read from a Hugging Face checkpoint directory, with the checkpoint's
own special ids ([PAD] [UNK] [CLS] [SEP] [MASK]; [CLS] is bos and [SEP] eos).

The directory holds `tokenizer.json` (preferred: its normalizer, lowercasing included, is used as
saved) or `vocab.txt` (lowercased when `do_lower_case` of `tokenizer_config.json` says so, or
when there is no such file, as BERT's uncased checkpoints are).
"""
import json
import os

import numpy as np

from selffb import errors
from selffb.data import tokenizer_base

SPECIALS = {'pad_id': '[PAD]', 'unk_id': '[UNK]', 'bos_id': '[CLS]', 'eos_id': '[SEP]',
            'mask_id': '[MASK]'}


def _lowercase(path):
  """`do_lower_case` of `path`/tokenizer_config.json, True without one."""
  config = os.path.join(path, 'tokenizer_config.json')
  if not os.path.isfile(config):
    return True
  with open(config, encoding='utf-8') as f:
    return bool(json.load(f).get('do_lower_case', True))


def _load(path, lowercase):
  """The `tokenizers` tokenizer of the directory `path`."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  file, vocab = os.path.join(path, 'tokenizer.json'), os.path.join(path, 'vocab.txt')
  try:
    if os.path.isfile(file):
      return tokenizers.Tokenizer.from_file(file)
    if os.path.isfile(vocab):
      return tokenizers.BertWordPieceTokenizer.from_file(
          vocab, lowercase=_lowercase(path) if lowercase is None else lowercase)
  except Exception as e:  # pylint: disable=broad-except  # A bad file, or no [CLS]/[SEP].
    raise errors.InputError(f'WordPiece tokenizer {path!r} cannot be read: {e}') from None
  raise errors.InputError(f'WordPiece tokenizer {path!r} has neither tokenizer.json nor '
                          'vocab.txt; give a Hugging Face BERT checkpoint directory.')


class WordPieceTokenizer(tokenizer_base.Tokenizer):
  """A BERT checkpoint's WordPiece tokenizer (`path`, its directory). `lowercase` applies to a
  `vocab.txt` only (None: as `tokenizer_config.json` says, else True); a `tokenizer.json`
  carries its own normalizer."""

  def __init__(self, path, lowercase=None):
    self.path = path
    self.tok = _load(path, lowercase)
    self.tok.no_padding()
    self.tok.no_truncation()
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    missing = [token for token in SPECIALS.values() if self.tok.token_to_id(token) is None]
    if missing:
      raise errors.InputError(f'WordPiece tokenizer {path!r} lacks the special tokens {missing}; '
                              f'a BERT vocabulary needs all of {list(SPECIALS.values())}.')
    for name, token in SPECIALS.items():
      setattr(self, name, self.tok.token_to_id(token))
    self.special_ids = np.asarray(sorted(getattr(self, n) for n in SPECIALS), np.int32)

  def encode(self, text):
    """The ids of `text`, no specials added."""
    return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_many(self, texts):
    return [np.asarray(e.ids, np.int32)
            for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def _decode(self, ids):
    return self.tok.decode(ids, skip_special_tokens=False)  # ## pieces joined to their word.

  @property
  def regular_ids(self):
    """What a masked LM's random replacement draws from: every token but the specials and
    BERT's [unusedN] placeholders."""
    return np.asarray(sorted(i for token, i in self.tok.get_vocab(with_added_tokens=True).items()
                             if i not in set(self.special_ids.tolist())
                             and not token.startswith('[unused')), np.int32)

  def word_boundaries(self):
    """(starts, ends), bool over the vocabulary: `starts[i]` when token i begins a word (is no
    continuation piece), `ends[i]` when the token after i begins a new word (the specials)."""
    prefix = getattr(self.tok.model, 'continuing_subword_prefix', None) or '##'
    starts = np.ones(self.vocab_size, bool)
    for token, i in self.tok.get_vocab(with_added_tokens=True).items():
      starts[i] = not token.startswith(prefix)
    ends = np.zeros(self.vocab_size, bool)
    ends[self.special_ids] = True
    return starts, ends
