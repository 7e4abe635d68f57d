"""Language modelling on documents (task 'text'): a prepared tfds dataset by name
(config.data.tfds_name) or local UTF-8 files (config.data.text.paths, or split files
`train_paths` / `validation_paths` / `test_paths`; documents cut by `separator`), through the grain
pipeline of selffb/data/lm.py: tokenized, split/truncated/dropped when longer than a row,
packed several to a row (or padded one to a row), loss on every token. Validation CE,
perplexity and bits per byte (the summed NLL in bits over the UTF-8 bytes the tokens encode, so
byte and SentencePiece runs compare) are on up to `eval_sequences` rows of the validation split."""
import dataclasses

from absl import logging
import jax.numpy as jnp

from selffb import errors
from selffb.data import lm as lm_data
from selffb.data import text
from selffb.tasks import seq

BATCH_KEYS = seq.BATCH_KEYS + ('segments',)
EVAL_KEYS = seq.EVAL_KEYS + ('segments', 'target_bytes')
loss_fn = seq.loss_fn
SUPPORTS_SELFTRAIN = False
DATA_KEYS = ('data.text.', 'data.tfds_name', 'data.seq_len', 'data.tokenizer',
             'data.sentencepiece.', 'data.workers')  # What makes the rows (and their order).
DECODER_ONLY = True  # Rows of documents: no source for an encoder-decoder.


@dataclasses.dataclass(frozen=True)
class TextFormat(seq.SequenceFormat):
  """How documents become rows (seq.SequenceFormat's fields serve prompts when sampling)."""
  seq_len: int = 128
  pack: bool = True
  long_docs: str = 'split'
  shuffle_window: int = 0
  eval_sequences: int = 256
  workers: int = 0

  def spec(self, seq_len=None):
    return lm_data.RowSpec(seq_len=seq_len or self.seq_len, pack=self.pack,
                           long_docs=self.long_docs)


def batch_format(config):
  t = config.data.text
  return TextFormat(seq_len=config.data.seq_len, pack=t.pack, long_docs=t.long_docs,
                    shuffle_window=t.shuffle_window, eval_sequences=t.eval_sequences,
                    workers=config.data.workers)


def packs(config):
  """Whether rows hold several documents (then the model kind needs SEGMENTS)."""
  return config.data.text.pack


def load_splits(config, data_dir):
  """{'train', 'validation'} documents; the training split's `fingerprint` names its text (the
  key of a SentencePiece model trained on it)."""
  del data_dir  # Local files are read in place; a named dataset lives where tfds prepared it.
  d = config.data
  splits, fingerprint = text.tfds_splits(d) if d.tfds_name else text.local_splits(d.text)
  splits['train'].fingerprint = fingerprint
  return splits


def training_text(config, splits):
  """(texts(), fingerprint): the training documents a SentencePiece model trains on."""
  cap = config.data.sentencepiece.max_sentences
  # A fixed seed: every seed of a sweep shares the model trained on the same text.
  return lambda: text.sample_texts(splits['train'], cap, seed=0), splits['train'].fingerprint


def check_data(config, splits, tokenizer, seq_len):
  """Logs what the long-document policy does to the first 10,000 training documents; raises
  when it leaves no training row."""
  fmt = batch_format(config)
  counts = lm_data.long_doc_counts(splits['train'], tokenizer, fmt.spec(seq_len))
  logging.info('text: of the first %d training documents, %d are longer than seq_len=%d + 1 '
               "tokens; long_docs=%r made %d pieces of them and dropped %d tokens",
               counts['documents'], counts['long'], seq_len, fmt.long_docs, counts['pieces'],
               counts['dropped_tokens'])
  if fmt.long_docs == 'drop' and counts['long'] == counts['documents']:
    raise errors.InputError(
        f"config.data.text.long_docs='drop' drops every one of the first {counts['documents']} "
        f"training documents (all longer than seq_len={seq_len}): use 'split' or 'truncate', or "
        'raise config.data.seq_len.')


def train_dataset(source, tokenizer, seq_len, batch_size, seed, process_index=0,
                  process_count=1, fmt=TextFormat()):
  return lm_data.train_batches(source, tokenizer, fmt.spec(seq_len), batch_size, seed,
                               process_index, process_count, fmt.shuffle_window, fmt.workers)


def eval_batches(source, tokenizer, batch_size, fmt=TextFormat()):
  """Validation rows; 'target_bytes' [B, T] holds the UTF-8 bytes of each target's text."""
  batches = lm_data.eval_batches(source, tokenizer, fmt.spec(), batch_size, fmt.eval_sequences)
  for batch in batches:
    batch['target_bytes'] = tokenizer.target_bytes(batch['inputs'], batch['targets'])
  return batches


def eval_sums(outputs, batch):
  """seq.eval_sums and 'bytes': the UTF-8 bytes the loss tokens encode (for bits per byte)."""
  sums = seq.eval_sums(outputs, batch)
  mask_BxT = batch['loss_mask'] * batch['valid'][:, None]
  sums['bytes'] = jnp.sum(batch['target_bytes'] * mask_BxT)
  return sums


def example_length(record, fmt=None):
  raise NotImplementedError("task 'text' reads documents of any length: set config.data.seq_len.")


def _file_problems(t):
  """Local files: `paths`, or split files (train and validation both named)."""
  found = []
  named = [('paths', t.paths)] if not t.train_paths else [
      (f'{n}_paths', t[f'{n}_paths']) for n in ('train', 'validation', 'test') if t[f'{n}_paths']]
  if t.train_paths and not t.validation_paths:
    found.append('config.data.text.train_paths needs config.data.text.validation_paths (the '
                 "official validation file, e.g. wiki.valid.tokens).")
  for key, paths in named:
    try:
      text.text_files(paths, f'config.data.text.{key}')
    except ValueError as e:
      found.append(str(e))
  if t.separator not in text.SEPARATORS:
    found.append(f'config.data.text.separator={t.separator!r}; choose one of {text.SEPARATORS}.')
  return found


def config_problems(config):
  d, t, found = config.data, config.data.text, []
  need = lambda ok, message: None if ok else found.append(message)
  if not d.tfds_name:
    found += _file_problems(t)
  need(d.seq_len >= 2, f"config.data.task='text' needs config.data.seq_len >= 2 (the row length "
       f'in tokens), not {d.seq_len}.')
  need(t.long_docs in lm_data.LONG_DOCS, f'config.data.text.long_docs={t.long_docs!r}; choose '
       f'one of {lm_data.LONG_DOCS}.')
  need(t.encoding_errors in text.ENCODING_ERRORS, f'config.data.text.encoding_errors='
       f'{t.encoding_errors!r}; choose one of {text.ENCODING_ERRORS}.')
  return found
