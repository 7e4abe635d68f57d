"""Reversed addition problems, rev(a) + rev(b) = rev(a + b): pure, deterministic generators."""
import numpy as np

from selffb import errors


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


def _train_pairs(rng, count, min_digits, max_digits, held_out):
  """A multiset of `count` training pairs, as a stream of fresh draws would give."""
  train = []
  while len(train) < count:
    n = 2 * (count - len(train))
    la, lb = rng.integers(min_digits, max_digits + 1, size=(2, n))
    low = lambda d: np.where(d == 1, 0, 10 ** (d - 1))
    a, b = rng.integers(low(la), 10 ** la), rng.integers(low(lb), 10 ** lb)
    train.extend(p for p in zip(a.tolist(), b.tolist()) if p not in held_out)
  return train[:count]


SPLIT_STREAMS = {'test': 1, 'validation': 2, 'train': 3}  # Each split's own random stream.


def split_rng(seed, split, digits=0):
  """The random stream of one split: drawing another split (or adding a test length) never
  moves it."""
  return np.random.default_rng([seed, SPLIT_STREAMS[split], digits])


def addition_splits(min_digits, max_digits, num_train, num_validation, num_test, test_digits,
                    seed):
  """Deterministic problem lists: {'train': [(a, b)], 'validation': ..., 'test_<n>': ...}.

  Each test_<n> has both operands n digits long; where there are few such problems (n = 1, 2)
  it takes at most half of them, so training still sees the rest. Train and validation draw each
  operand's length independently from [min_digits, max_digits] and never repeat a test problem.
  Every split draws from its own stream (`split_rng`): a test length outside the training range
  changes neither the training nor the validation problems; one inside it only removes its
  problems from them.
  """
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f'addition digits range [{min_digits}, {max_digits}] is empty.')
  splits, held_out = {}, set()
  for n in test_digits:
    count = min(num_test, operands_of_length(n) ** 2 // 2)
    splits[f'test_{n}'] = distinct_pairs(split_rng(seed, 'test', n), count,
                                         lambda n=n: (n, n), held_out)
    held_out.update(splits[f'test_{n}'])
  capacity = sum(operands_of_length(d) for d in range(min_digits, max_digits + 1))
  free = capacity ** 2 - len(held_out)  # Problems neither a test nor (yet) validation.
  if num_validation >= free:
    raise errors.InputError(
        f'{num_validation} distinct validation problems requested but operands of '
        f'{min_digits}..{max_digits} digits leave {free} outside the test sets and training '
        'needs some too; lower num_validation or num_test.')
  rng = split_rng(seed, 'validation')
  lengths = lambda: tuple(rng.integers(min_digits, max_digits + 1, size=2))
  splits['validation'] = distinct_pairs(rng, num_validation, lengths, held_out)
  held_out.update(splits['validation'])
  splits['train'] = _train_pairs(split_rng(seed, 'train'), num_train, min_digits, max_digits,
                                 held_out)
  return splits


OPERANDS = ('one_n', 'both_n')  # config.selftrain.operands: which operands are n digits long.


def draw_problems(rng, digits, count, exclude, both=False):
  """`count` distinct (a, b) with the longer operand `digits` long (`both`: both operands that
  long, as Lee et al.'s rounds prompt), none in `exclude`."""
  capacity = operands_of_length(digits) * (operands_of_length(digits) if both else 10 ** digits)
  if count > capacity // 2:
    raise errors.InputError(f'{count} problems of {digits} digits requested; lower '
                            'config.selftrain.prompts_per_round.')
  pairs = set()
  while len(pairs) < count:
    if both:
      pair = (random_operand(rng, digits), random_operand(rng, digits))
    else:
      other = int(rng.integers(1, digits + 1))
      a, b = random_operand(rng, digits), random_operand(rng, other)
      pair = (a, b) if rng.random() < 0.5 else (b, a)
    if pair not in exclude:
      pairs.add(pair)
  return sorted(pairs)
