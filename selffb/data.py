"""Data: a byte tokenizer, tfds builders that write ArrayRecord, and grain pipelines.

Datasets are written once by a TensorFlow-free tfds builder (ArrayRecord files, keyed by a hash of
their settings, so a config change writes a new version and never reuses stale data) and read
back with `as_data_source`. Records are text: `prompt` (no loss) and `answer` (loss). The training
pipeline reads whole batches of indices at once (`__getitems__`), which is ~10x cheaper than
per-record reads, and its iterator state is a small dict saved with each checkpoint.
"""
import dataclasses
import glob
import hashlib
import json
import os

import grain
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

tfds.disable_progress_bar()


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: pad 0, bos 1, eos 2."""
  pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
  vocab_size = 256 + 3

  def encode(self, text):
    raw = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    return np.frombuffer(raw, np.uint8).astype(np.int32) + self.offset

  def encode_prompt(self, text):
    """bos + the text: what a model is given to continue."""
    return np.concatenate([[self.bos_id], self.encode(text)]).astype(np.int32)

  def decode(self, ids):
    """Bytes up to the first eos, specials dropped, as text (invalid UTF-8 replaced)."""
    ids = np.asarray(ids).tolist()
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return bytes(i - self.offset for i in ids if i >= self.offset).decode('utf-8', 'replace')


# ---- The built-in task: reversed addition, rev(a) + rev(b) = rev(a + b). ----

def addition_example(a, b, aligned=False):
  """Least significant digit first, so each answer digit depends only on what came before.

  `aligned`: both operands and the answer are zero-padded to n + 1 digits, n the longer
  operand's length, so digit i of a, b and the answer line up and every answer has a known
  length (the model stops by length, not by an end token).
  """
  if not aligned:
    return {'prompt': f'{str(a)[::-1]}+{str(b)[::-1]}=', 'answer': str(a + b)[::-1]}
  n = max(len(str(a)), len(str(b))) + 1
  rev = lambda x: str(x)[::-1].ljust(n, '0')
  return {'prompt': f'{rev(a)}+{rev(b)}=', 'answer': rev(a + b)}


def addition_answer(prompt, aligned=False):
  """The correct answer to an addition prompt ('<rev a>+<rev b>='), or None if it is not one."""
  prompt = prompt.decode() if isinstance(prompt, bytes) else prompt
  parts = prompt[:-1].split('+') if prompt.endswith('=') else []
  if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
    return None
  a, b = (int(p[::-1]) for p in parts)
  answer = str(a + b)[::-1]
  return answer.ljust(max(map(len, parts)), '0') if aligned else answer


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a record becomes a token sequence: does the answer end with eos, how do position ids
  run, and how far may training shift them.

  positions 'sequential': 0, 1, 2, ... 'aligned' (for '<a>+<b>=<answer>'): ids restart at 0 on
  bos and on '+', and at 1 on '=', so digit i of either operand has id i and the token that
  predicts answer digit i has id i too: RoPE then sees the digits to add at distance 0.
  shift: training adds one random s in [0, shift] per sequence to every id above 0, so ids the
  model has not seen at one length are seen at shorter ones.
  """
  eos: bool = True
  positions: str = 'sequential'
  shift: int = 0

  def answer_length(self, prompt):
    """Tokens of the answer to an aligned addition prompt (None if answers end with eos)."""
    if self.eos:
      return None
    return len(prompt.split('+')[0])

  def position_ids(self, tokens, tokenizer):
    """Ids for a token sequence that starts with bos."""
    if self.positions == 'sequential':
      return np.arange(len(tokens), dtype=np.int32)
    plus, equals = (int(tokenizer.encode(ch)[0]) for ch in '+=')
    tokens = np.asarray(tokens)
    slot = np.arange(len(tokens))
    restart = (tokens == plus) | (tokens == equals) | (slot == 0)  # bos restarts too.
    start = np.maximum.accumulate(np.where(restart, slot, 0))  # The segment's first slot.
    return (slot - start + (tokens[start] == equals)).astype(np.int32)


def layout_of(c):
  """`config.data` -> the Layout its records are encoded with."""
  if c.task == 'addition' and c.addition.format == 'aligned':
    return Layout(eos=False, positions='aligned', shift=c.addition.position_shift)
  return Layout()


def operands_of_length(digits):
  """How many numbers have this many digits (0-9 count as one digit)."""
  return 10 if digits == 1 else 9 * 10 ** (digits - 1)


def random_operand(rng, digits):
  """A uniform `digits`-digit number (0-9 for one digit), of any length."""
  if digits <= 18:  # Fits int64.
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10 ** digits))
  head = rng.integers(1, 10)
  return int(str(head) + ''.join(map(str, rng.integers(0, 10, digits - 1))))


def distinct_pairs(rng, count, lengths, exclude):
  """`count` distinct (a, b) pairs not in `exclude`; `lengths()` draws the two operand lengths."""
  pairs = set()
  while len(pairs) < count:
    la, lb = lengths()
    pair = (random_operand(rng, la), random_operand(rng, lb))
    if pair not in exclude:
      pairs.add(pair)
  return sorted(pairs)


def addition_splits(min_digits, max_digits, num_train, num_validation, num_test, test_digits,
                    seed):
  """Deterministic problem lists: {'train': [(a, b)], 'validation': ..., 'test_<n>': ...}.

  Each test_<n> has both operands n digits long; where there are few such problems (n = 1, 2)
  it takes at most half of them, so training still sees the rest. Train and validation draw each
  operand's length independently from [min_digits, max_digits] and never repeat a test problem.
  """
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f'addition digits range [{min_digits}, {max_digits}] is empty.')
  rng = np.random.default_rng(seed)
  splits, held_out = {}, set()
  for n in test_digits:
    count = min(num_test, operands_of_length(n) ** 2 // 2)
    splits[f'test_{n}'] = distinct_pairs(rng, count, lambda n=n: (n, n), held_out)
    held_out.update(splits[f'test_{n}'])
  lengths = lambda: tuple(rng.integers(min_digits, max_digits + 1, size=2))
  capacity = sum(operands_of_length(d) for d in range(min_digits, max_digits + 1))
  free = capacity ** 2 - len(held_out)  # Problems neither a test nor (yet) validation.
  if num_validation >= free:
    raise ValueError(f'{num_validation} distinct validation problems requested but operands of '
                     f'{min_digits}..{max_digits} digits leave {free} outside the test sets and '
                     'training needs some too; lower num_validation or num_test.')
  splits['validation'] = distinct_pairs(rng, num_validation, lengths, held_out)
  held_out.update(splits['validation'])
  # Training problems may repeat (a multiset), as a stream of fresh draws would.
  train = []
  while len(train) < num_train:
    n = 2 * (num_train - len(train))
    la, lb = rng.integers(min_digits, max_digits + 1, size=(2, n))
    low = lambda d: np.where(d == 1, 0, 10 ** (d - 1))
    a, b = rng.integers(low(la), 10 ** la), rng.integers(low(lb), 10 ** lb)
    train.extend(p for p in zip(a.tolist(), b.tolist()) if p not in held_out)
  splits['train'] = train[:num_train]
  return splits


@dataclasses.dataclass
class AdditionConfig(tfds.core.BuilderConfig):
  settings: str = '{}'  # JSON of the `addition_splits` arguments.


class ReversedAddition(tfds.core.GeneratorBasedBuilder):
  """The built-in task as an ArrayRecord dataset; one config per distinct setting."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'prompt': tfds.features.Text(), 'answer': tfds.features.Text(),
        'digits': np.int32}))

  def _split_generators(self, dl_manager):
    del dl_manager
    settings = json.loads(self.builder_config.settings)
    settings.pop('aligned', None)
    splits = addition_splits(**settings)
    aligned = json.loads(self.builder_config.settings).get('aligned', False)
    return {name: self._generate_examples(pairs, aligned) for name, pairs in splits.items()}

  def _generate_examples(self, pairs, aligned):
    for i, (a, b) in enumerate(pairs):
      yield i, dict(addition_example(a, b, aligned), digits=max(len(str(a)), len(str(b))))


# ---- Local text files. ----

@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
  settings: str = '{}'  # JSON: files, chunk_bytes, validation_fraction, seed.


class LocalText(tfds.core.GeneratorBasedBuilder):
  """UTF-8 text files cut into chunks of at most `chunk_bytes` bytes; loss on every token."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'prompt': tfds.features.Text(), 'answer': tfds.features.Text(), 'digits': np.int32}))

  def _split_generators(self, dl_manager):
    del dl_manager
    s = json.loads(self.builder_config.settings)
    chunks = []
    for path in s['files']:
      text = read_text_file(path)
      # Cut on character boundaries so every chunk is valid UTF-8.
      piece = []
      size = 0
      for ch in text:
        n = len(ch.encode('utf-8'))
        if size + n > s['chunk_bytes']:
          chunks.append(''.join(piece))
          piece, size = [], 0
        piece.append(ch)
        size += n
      chunks.append(''.join(piece))
    order = np.random.default_rng(s['seed']).permutation(len(chunks))
    n_val = max(1, int(round(len(chunks) * s['validation_fraction'])))
    if len(chunks) - n_val < 1:
      raise ValueError(f'text files {s["files"]} give {len(chunks)} chunk(s) of '
                       f'{s["chunk_bytes"]} bytes: too little for a train and a validation split.')
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
    raise ValueError(f'text file {path} is empty; remove it from config.data.text.paths.')
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'text file {path} is not UTF-8 ({e}); convert it (e.g. iconv -t utf-8) '
                     'or remove it from config.data.text.paths.') from None


def text_files(paths):
  """The files that config.data.text.paths (comma-separated paths or globs) names."""
  files = []
  for pattern in [p.strip() for p in paths.split(',') if p.strip()]:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise ValueError(f'config.data.text.paths: {pattern!r} matches no file.')
    files.extend(matched)
  if not files:
    raise ValueError("config.data.task='text' needs config.data.text.paths (files or globs).")
  return files


def _build(builder_cls, config_cls, settings, data_dir, fingerprint):
  """Writes the dataset for these settings once (keyed by their hash) and opens its splits."""
  digest = hashlib.sha256((json.dumps(settings, sort_keys=True) + fingerprint).encode())
  name = 'v' + digest.hexdigest()[:12]
  builder = builder_cls(data_dir=data_dir, file_format='array_record',
                        config=config_cls(name=name, settings=json.dumps(settings)))
  if not builder.is_prepared():
    logging.info('writing %s to %s', builder_cls.__name__, builder.data_path)
  builder.download_and_prepare()
  return {split: builder.as_data_source(split=split) for split in builder.info.splits}


def load_splits(c, seed, workdir):
  """`config.data` -> {split name: random-access source of records}."""
  data_dir = c.data_dir or os.path.join(workdir, 'data')
  if c.task == 'addition':
    a = c.addition
    settings = dict(min_digits=a.min_digits, max_digits=a.max_digits, num_train=a.num_train,
                    num_validation=a.num_validation, num_test=a.num_test,
                    test_digits=list(a.test_digits), seed=seed)
    if a.format == 'aligned':  # Plain settings keep the hash (and dataset) they always had.
      settings['aligned'] = True
    elif a.format != 'plain':
      raise ValueError(f"config.data.addition.format={a.format!r}; choose 'plain' or 'aligned'.")
    return _build(ReversedAddition, AdditionConfig, settings, data_dir, '')
  if c.task == 'text':
    files = text_files(c.text.paths)
    for path in files:
      read_text_file(path)  # Fail on a bad file before anything is written.
    stamp = ''.join(f'{p}:{os.path.getsize(p)}:{os.path.getmtime(p)}' for p in files)
    if c.seq_len < 2:
      raise ValueError("config.data.task='text' needs config.data.seq_len >= 2 (chunk size).")
    settings = dict(files=files, chunk_bytes=c.seq_len - 1,
                    validation_fraction=c.text.validation_fraction, seed=seed)
    return _build(LocalText, TextConfig, settings, data_dir, stamp)
  raise ValueError(f"config.data.task={c.task!r}; choose 'addition' or 'text'.")


# ---- Batches. ----

def encode_batch(records, tokenizer, seq_len, layout=Layout(), shifts=None):
  """Records -> {'inputs', 'targets', 'positions', 'loss_mask', 'digits'}, right-padded to seq_len.

  The sequence is bos + prompt + answer (+ eos if the layout has one); the loss covers the answer
  (and eos). Padding has position -1. `shifts` (one per record) offset the ids above 0.
  """
  n = len(records)
  inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  targets = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  positions = np.full((n, seq_len), -1, np.int32)
  mask = np.zeros((n, seq_len), np.float32)
  for i, r in enumerate(records):
    prompt, answer = tokenizer.encode(r['prompt']), tokenizer.encode(r['answer'])
    tokens = np.concatenate([[tokenizer.bos_id], prompt, answer] +
                            ([[tokenizer.eos_id]] if layout.eos else [])).astype(np.int32)
    if len(tokens) - 1 > seq_len:
      raise ValueError(f'an example of {len(tokens) - 1} tokens exceeds seq_len={seq_len}; '
                       'raise config.data.seq_len (0 fits the longest training example).')
    ids = layout.position_ids(tokens, tokenizer)[:-1]
    if shifts is not None:
      ids = np.where(ids > 0, ids + shifts[i], ids)
    inputs[i, :len(tokens) - 1] = tokens[:-1]
    targets[i, :len(tokens) - 1] = tokens[1:]
    positions[i, :len(tokens) - 1] = ids
    mask[i, len(prompt):len(tokens) - 1] = 1.0
  digits = np.asarray([r['digits'] for r in records], np.int32)
  return {'inputs': inputs, 'targets': targets, 'positions': positions, 'loss_mask': mask,
          'digits': digits}


def example_length(record):
  """Tokens a record occupies in `inputs` (bos + prompt + answer; an eos is only a target)."""
  return 1 + len(record['prompt']) + len(record['answer'])


def longest(source):
  """The longest example of a source, in input tokens."""
  return max(example_length(r) for r in read_all(source))


def read_all(source, chunk=4096):
  for start in range(0, len(source), chunk):
    yield from source.__getitems__(list(range(start, min(start + chunk, len(source)))))


def train_dataset(source, tokenizer, seq_len, batch_size, seed, process_index=0,
                  process_count=1, layout=Layout()):
  """An endless, per-epoch reshuffled grain dataset of this host's share of each global batch.

  Position shifts (if the layout has them) are drawn per global batch from (seed, batch index),
  so they are reproducible, resume exactly and agree across hosts.
  """
  if batch_size % process_count:
    raise ValueError(f'config.data.batch_size={batch_size} is not divisible by the '
                     f'{process_count} hosts.')
  if len(source) == 0:
    raise ValueError('the training split is empty.')
  per_host = batch_size // process_count
  lo = process_index * per_host

  def load(index, indices):
    shifts = None
    if layout.shift:
      shifts = np.random.default_rng([seed, index]).integers(0, layout.shift + 1, batch_size)
      shifts = shifts[lo:lo + per_host]
    return encode_batch(source.__getitems__(indices[lo:lo + per_host].tolist()), tokenizer,
                        seq_len, layout, shifts)

  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat().batch(batch_size)
  return ds.map_with_index(load)


def make_iterator(dataset, prefetch=8):
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                         prefetch_buffer_size=prefetch)))


def eval_batches(source, tokenizer, batch_size, layout=Layout()):
  """A whole split as a list of batches, padded to the split's longest example.

  The last batch is padded with copies of the first record, marked by `valid` = 0.
  """
  records = list(read_all(source))
  length = max(example_length(r) for r in records)
  batches = []
  for start in range(0, len(records), batch_size):
    chunk = records[start:start + batch_size]
    valid = np.zeros(batch_size, np.float32)
    valid[:len(chunk)] = 1.0
    chunk = chunk + [chunk[0]] * (batch_size - len(chunk))
    batch = encode_batch(chunk, tokenizer, length, layout)
    batch['valid'] = valid
    batches.append(batch)
  return batches
