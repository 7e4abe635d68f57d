"""Tokenizers by name (`config.data.tokenizer`). A tokenizer owns its vocabulary size and its
special ids (pad, bos, eos); the model's vocabulary is read from it, never configured twice.

'byte': UTF-8 bytes. 'sentencepiece' (`config.data.sentencepiece`): a given `.model` file, or one
trained on the training split's text and cached under the data dir, keyed by its settings and
the text it was trained on, so a rerun reuses it and any change trains a new one.
"""
import hashlib
import io
import itertools
import json
import os

from absl import logging
import numpy as np

from selffb import errors
from selffb import runtime
from selffb.data import tokenizer_base
from selffb.data import wordpiece

PAD, BOS, EOS, UNK = tokenizer_base.PAD, tokenizer_base.BOS, tokenizer_base.EOS, tokenizer_base.UNK
MODEL_TYPES = ('unigram', 'bpe')


class ByteTokenizer(tokenizer_base.Tokenizer):
  """UTF-8 bytes shifted past three specials: pad 0, bos 1, eos 2 (invalid UTF-8 decodes to
  U+FFFD)."""
  offset = 3
  vocab_size = 256 + 3
  regular_ids = np.arange(3, 256 + 3, dtype=np.int32)
  word_separator = np.asarray([ord(' ') + 3], np.int32)  # Between a tagged text's words.

  def word_boundaries(self):
    """Whitespace bytes are words of their own; a word begins after one or after a special."""
    ends = np.zeros(self.vocab_size, bool)
    ends[[ord(c) + self.offset for c in ' \t\n\r']] = True
    starts = ends.copy()
    ends[list(self.special_ids)] = True
    return starts, ends

  def encode(self, text):
    raw = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    return np.frombuffer(raw, np.uint8).astype(np.int32) + self.offset

  def _decode(self, ids):
    return bytes(i - self.offset for i in ids).decode('utf-8', 'replace')

  def target_bytes(self, inputs, targets):
    """UTF-8 bytes of the text each target token encodes: 1 a byte, 0 a special."""
    del inputs
    return (np.asarray(targets) >= self.offset).astype(np.float32)


class SentencePieceTokenizer(tokenizer_base.Tokenizer):
  """A SentencePiece model (`proto`, its serialized bytes) with pad 0, bos 1, eos 2, unk 3 (as
  `train` writes it; a given model must have the same specials)."""

  def __init__(self, model_proto, path=''):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.proto, self.path = model_proto, path
    self.vocab_size = self.sp.get_piece_size()
    ids = (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id())
    if ids != (PAD, BOS, EOS):
      raise errors.InputError(
          f'SentencePiece model {path or "(given)"} has pad/bos/eos ids {ids}; selffb needs '
          f'{(PAD, BOS, EOS)}: train it with --pad_id=0 --bos_id=1 --eos_id=2 --unk_id=3, or '
          'leave config.data.sentencepiece.model empty to train one on the training split.')

  special_ids = (PAD, BOS, EOS, UNK)
  unk_id = UNK

  @property
  def regular_ids(self):
    return np.arange(UNK + 1, self.vocab_size, dtype=np.int32)

  def word_boundaries(self):
    """A piece with the word marker begins a word; a word begins after '\\n' or a special."""
    pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
    ends = np.asarray([p == '\n' for p in pieces])
    ends[list(self.special_ids)] = True
    return np.asarray([p.startswith('\u2581') for p in pieces]) | ends, ends

  @staticmethod
  def _text(text):
    return text if isinstance(text, str) else bytes(text).decode('utf-8', 'replace')

  def encode(self, text):
    return np.asarray(self.sp.encode(self._text(text)), np.int32)

  def encode_many(self, texts):
    return [np.asarray(ids, np.int32) for ids in self.sp.encode([self._text(t) for t in texts])]

  def _decode(self, ids):
    return self.sp.decode(ids)

  def target_bytes(self, inputs, targets):
    """UTF-8 bytes of the text each target token encodes: a piece's bytes (the word marker a
    space, a byte-fallback piece 1, a special 0), less the space SentencePiece's dummy prefix
    adds before a document's first piece (the target after bos), which is not in the text."""
    if not hasattr(self, '_piece_bytes'):
      sp = self.sp
      self._piece_bytes = np.asarray([
          0 if sp.is_control(i) or sp.is_unknown(i) else 1 if sp.is_byte(i) else
          len(sp.id_to_piece(i).replace('\u2581', ' ').encode('utf-8'))
          for i in range(self.vocab_size)], np.float32)
      marked = np.asarray([sp.id_to_piece(i).startswith('\u2581')
                           for i in range(self.vocab_size)])
      self._prefix = marked & sp.encode('a', out_type=str)[0].startswith('\u2581')
    targets = np.asarray(targets)
    first = (np.asarray(inputs) == BOS) & self._prefix[targets]
    return self._piece_bytes[targets] - first.astype(np.float32)


class Untrained:
  """A SentencePiece model not trained yet (a dry run reads only its vocabulary size)."""
  pad_id, bos_id, eos_id = PAD, BOS, EOS
  special_ids = (PAD, BOS, EOS, UNK)

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size

  def _missing(self, *args):
    raise errors.InputError('no SentencePiece model yet: a training run trains one (or set '
                            'config.data.sentencepiece.model).')

  encode = encode_many = encode_prompt = decode = _missing


class WithMask:
  """A tokenizer with one more id, the mask token of masked LM (`mask_id`, after its own);
  everything else is the wrapped tokenizer's (`base`)."""

  def __init__(self, base):
    self.base, self.mask_id, self.vocab_size = base, base.vocab_size, base.vocab_size + 1
    self.special_ids = tuple(base.special_ids) + (self.mask_id,)

  def __getattr__(self, name):
    if name == 'base':  # Unpickling (grain's worker processes) asks before base is set.
      raise AttributeError(name)
    return getattr(self.base, name)

  def word_boundaries(self):
    return tuple(np.append(table, True) for table in self.base.word_boundaries())

  def decode(self, ids):
    return self.base.decode([i for i in np.asarray(ids).tolist() if i != self.mask_id])


def with_mask(tokenizer):
  """`tokenizer` if it has a mask token (WordPiece), else it with one added."""
  return tokenizer if hasattr(tokenizer, 'mask_id') else WithMask(tokenizer)


TOKENIZERS = ('byte', 'sentencepiece', 'wordpiece')


def problems(d):
  """Problems of config.data's tokenizer settings (`d` is config.data)."""
  if d.tokenizer not in TOKENIZERS:
    return [f'config.data.tokenizer={d.tokenizer!r}; choose one of {TOKENIZERS}.']
  if d.tokenizer == 'wordpiece':
    return [] if os.path.isdir(d.wordpiece.path) else [
        f"config.data.tokenizer='wordpiece' reads an imported BERT's vocabulary: "
        f'config.data.wordpiece.path={d.wordpiece.path!r} is not a directory (give the one with '
        'tokenizer.json or vocab.txt).']
  if d.tokenizer != 'sentencepiece':
    return []
  s, found = d.sentencepiece, []
  if s.model:
    if not os.path.isfile(s.model):
      found.append(f'config.data.sentencepiece.model={s.model!r} does not exist; give a .model '
                   "file, or '' to train one on the training split.")
    return found
  if s.model_type not in MODEL_TYPES:
    found.append(f'config.data.sentencepiece.model_type={s.model_type!r}; choose one of '
                 f'{MODEL_TYPES}.')
  low = 4 + 1 + (256 if s.byte_fallback else 0)
  if s.vocab_size < low:
    found.append(f'config.data.sentencepiece.vocab_size={s.vocab_size} is below {low} (4 '
                 'specials, the newline piece' + (' and 256 byte pieces of byte_fallback'
                                                 if s.byte_fallback else '') + ').')
  if not 0.9 <= s.character_coverage <= 1.0:
    found.append(f'config.data.sentencepiece.character_coverage={s.character_coverage}; use '
                 '0.9 to 1.0 (0.9995 for Latin text, 1.0 for small alphabets).')
  return found


def vocab_size(d, mask=False):
  """The vocabulary of config.data's tokenizer (`mask`: with a mask token), known before any
  data is read (a given model is opened; a trained one will have
  config.data.sentencepiece.vocab_size)."""
  found = problems(d)
  if found:
    raise ValueError(found[0])
  if d.tokenizer == 'wordpiece':
    return get(d).vocab_size  # It has its own [MASK].
  if d.tokenizer == 'byte':
    size = ByteTokenizer.vocab_size
  else:
    size = load(d.sentencepiece.model).vocab_size if d.sentencepiece.model else (
        d.sentencepiece.vocab_size)
  return size + bool(mask)


def load(path):
  with open(path, 'rb') as f:
    return SentencePieceTokenizer(f.read(), path)


def _train_settings(s):
  return {'vocab_size': s.vocab_size, 'model_type': s.model_type,
          'character_coverage': s.character_coverage, 'max_sentences': s.max_sentences,
          'byte_fallback': s.byte_fallback}


def train(texts, settings, path):
  """Trains a SentencePiece model on `texts` (documents; each line a sentence) and writes it to
  `path` atomically."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  lines = itertools.islice((line for text in texts for line in text.split('\n')
                            if line.strip()), settings['max_sentences'])
  proto = io.BytesIO()
  spm.set_random_generator_seed(0)  # The same text makes the same model.
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=proto, vocab_size=settings['vocab_size'],
        model_type=settings['model_type'], character_coverage=settings['character_coverage'],
        input_sentence_size=settings['max_sentences'], shuffle_input_sentence=True,
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK, user_defined_symbols=['\n'],
        byte_fallback=settings['byte_fallback'], normalization_rule_name='identity',
        remove_extra_whitespaces=False, max_sentence_length=1 << 16, minloglevel=2,
        num_threads=os.cpu_count() or 1)
  except RuntimeError as e:  # e.g. "Vocabulary size is too high" for a small corpus.
    raise errors.InputError(
        f'SentencePiece training failed: {e}. Lower config.data.sentencepiece.vocab_size or '
        'give more text.') from None
  runtime.write_bytes(path, proto.getvalue())
  return proto.getvalue()


def get(d, texts=None, fingerprint='', cache_dir=''):
  """The tokenizer config.data (`d`) names. A SentencePiece model to train is trained on
  `texts()` (an iterable of training documents, called only when the cache misses) and cached
  in `cache_dir`/sentencepiece under a hash of its settings and `fingerprint` (what names the
  text: dataset and split, or files with their sizes and times)."""
  found = problems(d)
  if found:
    raise ValueError(found[0])
  if d.tokenizer == 'byte':
    return ByteTokenizer()
  if d.tokenizer == 'wordpiece':
    return wordpiece.WordPieceTokenizer(d.wordpiece.path)
  if d.sentencepiece.model:
    return load(d.sentencepiece.model)
  settings = _train_settings(d.sentencepiece)
  key = hashlib.sha256((json.dumps(settings, sort_keys=True) + fingerprint).encode())
  path = os.path.join(cache_dir, 'sentencepiece', f'sp_{key.hexdigest()[:16]}.model')
  if os.path.isfile(path):
    logging.info('SentencePiece model reused from %s', path)
    return load(path)
  logging.info('training a %d-piece %s SentencePiece model on the training split -> %s',
               settings['vocab_size'], settings['model_type'], path)
  return SentencePieceTokenizer(train(texts(), settings, path), path)


RUN_FILE = 'tokenizer.model'  # A run's copy of its SentencePiece model, in its workdir.


def check_run_copy(tokenizer, workdir, resuming):
  """Keeps a copy of a SentencePiece model in the run's workdir: a resumed run must use the
  model its checkpoint was trained with (raises InputError naming both files otherwise; a
  switch to or from bytes is a changed data.tokenizer, which checks.resume_changes refuses)."""
  tokenizer = getattr(tokenizer, 'base', tokenizer)  # WithMask's.
  if not isinstance(tokenizer, SentencePieceTokenizer):
    return
  path = os.path.join(workdir, RUN_FILE)
  if resuming and os.path.isfile(path):
    with open(path, 'rb') as f:
      saved = f.read()
    if saved != tokenizer.proto:
      raise errors.InputError(
          f'the checkpoint in {workdir} was trained with the SentencePiece model saved as {path} '
          f'({SentencePieceTokenizer(saved, path).vocab_size} pieces), not with '
          f'{tokenizer.path or "this one"} ({tokenizer.vocab_size} pieces): its embeddings '
          f'belong to the other vocabulary. Set config.data.sentencepiece.model={path} to '
          'resume, or use a new --workdir.')
    return
  runtime.write_bytes(path, tokenizer.proto)
