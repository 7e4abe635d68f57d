"""String reversal or sorting (task 'strings'), a sequence-to-sequence task that runs offline:
records `{'prompt': '<s>=', 'answer': reverse(s) or sorted(s)}` of random strings over
`config.data.strings.alphabet`, generated in memory; training lengths min_length..max_length,
test splits `test_<n>` per length in `test_lengths` (longer ones measure length
generalisation). Batches, loss and teacher-forced sums are the decoder-LM ones of `seq.py`
(answers end with eos), or an encoder-decoder's with model kind 'encdec'.
"""
import numpy as np

from selffb.data import pipeline
from selffb.feedback import scoring
from selffb.tasks import seq

BATCH_KEYS, EVAL_KEYS = seq.BATCH_KEYS, seq.EVAL_KEYS
train_dataset, eval_batches = seq.train_dataset, seq.eval_batches
loss_fn, eval_sums, example_length = seq.loss_fn, seq.eval_sums, seq.example_length
SUPPORTS_SELFTRAIN = False
DATA_KEYS = ('data.strings.',)
OPS = {'reverse': lambda s: s[::-1], 'sort': lambda s: ''.join(sorted(s))}


def _permutations(prompt):
  """Two permutations of a sort prompt's string (reversed, rotated by one): same sorted output."""
  text = prompt[:-1]
  return [text[::-1] + '=', text[1:] + text[:1] + '=']


def consistency(config):
  """The self-consistency check: 'sort' declares permutations of the input; 'reverse' has no
  transformation that keeps its answer, so it declares none (None)."""
  if config.data.strings.op != 'sort':
    return None
  return scoring.Consistency(views=_permutations, same_answer=lambda x, y: x == y)


def batch_format(config):
  del config
  return seq.SequenceFormat()


def record(text, op):
  return {'prompt': (text + '=').encode(), 'answer': OPS[op](text).encode(), 'digits': len(text)}


def _draw(rng, alphabet, lengths, count, exclude):
  """`count` distinct strings not in `exclude`, each of a length drawn from `lengths`."""
  out = set()
  while len(out) < count:
    text = ''.join(rng.choice(list(alphabet), int(rng.choice(lengths))))
    if text not in exclude:
      out.add(text)
  return sorted(out)


def load_splits(config, data_dir):
  """train, validation and test_<n>: disjoint, a pure function of the config and the seed."""
  del data_dir
  c = config.data.strings
  rng = np.random.default_rng([config.seed, 31])
  tests = {n: _draw(rng, c.alphabet, [n], c.num_test, set()) for n in c.test_lengths}
  held = {t for texts in tests.values() for t in texts}
  train_lengths = list(range(c.min_length, c.max_length + 1))
  val = _draw(rng, c.alphabet, train_lengths, c.num_validation, held)
  train = [''.join(rng.choice(list(c.alphabet), int(rng.choice(train_lengths))))
           for _ in range(c.num_train)]
  held.update(val)
  train = [t for t in train if t not in held]
  splits = {'train': train, 'validation': val, **{f'test_{n}': t for n, t in tests.items()}}
  return {name: pipeline.ListSource([record(t, c.op) for t in texts])
          for name, texts in splits.items()}


def config_problems(config):
  c, found = config.data.strings, []
  need = lambda ok, message: None if ok else found.append(message)
  need(c.op in OPS, f'config.data.strings.op={c.op!r}; choose one of {tuple(OPS)}.')
  need(len(set(c.alphabet)) >= 2 and '=' not in c.alphabet,
       f'config.data.strings.alphabet={c.alphabet!r} needs 2 or more symbols, not "=".')
  need(1 <= c.min_length <= c.max_length, f'config.data.strings lengths [{c.min_length}, '
       f'{c.max_length}] are empty or start below 1.')
  need(min(c.num_train, c.num_validation, c.num_test) >= 1,
       'config.data.strings.num_train, num_validation and num_test must be >= 1.')
  need(len(c.test_lengths) > 0 and min(c.test_lengths) >= 1,
       f'config.data.strings.test_lengths={c.test_lengths} needs lengths >= 1.')
  symbols = len(set(c.alphabet))
  for n in c.test_lengths:
    need(symbols ** n >= c.num_test, f'there are {symbols ** n} strings of length {n} over '
         f'{c.alphabet!r}, fewer than config.data.strings.num_test={c.num_test}.')
  lengths = range(c.min_length, c.max_length + 1)
  left = sum(symbols ** n for n in lengths) - c.num_test * sum(n in lengths for n in set(
      c.test_lengths))
  need(left >= 2 * c.num_validation, f'strings of {c.min_length}-{c.max_length} symbols over '
       f'{c.alphabet!r}, less the test ones, are too few for num_validation='
       f'{c.num_validation} (twice as many are needed).')
  if config.model.positions == 'learned':
    longest = 2 * max(list(c.test_lengths) + [c.max_length]) + 3  # bos s = answer eos.
    need(longest <= config.model.max_len, f'strings of the longest test length need {longest} '
         f'positions but config.model.max_len={config.model.max_len} (learned positions).')
  return found
