"""The built-in task: reversed addition, rev(a) + rev(b) = rev(a + b), with its self-training hooks.

Records are `{'prompt': '<rev a>+<rev b>=', 'answer': '<rev sum>', 'digits': n}`, generated in
memory; batches, loss and teacher-forced sums are the decoder-LM ones of `tasks/seq.py`.
Self-training draws problems one digit longer each round, verifies answers
exactly, and judges an answer's form (digits, length) without knowing the sum.
"""
import dataclasses

import numpy as np

from selffb import errors
from selffb.data import pipeline
from selffb.feedback import scoring
from selffb.tasks import addition_feedback
from selffb.tasks import addition_problems as problems
from selffb.tasks import seq

BATCH_KEYS, EVAL_KEYS = seq.BATCH_KEYS, seq.EVAL_KEYS
train_dataset, eval_batches = seq.train_dataset, seq.eval_batches
loss_fn, eval_sums, example_length = seq.loss_fn, seq.eval_sums, seq.example_length
SUPPORTS_SELFTRAIN = True
example_feedback = addition_feedback.example_feedback  # --mode=finetune without a file.
example_problems = addition_feedback.example_problems  # Its config keys' problems.
DATA_KEYS = ('data.addition.',)  # What makes the records; a change restarts early stopping.


@dataclasses.dataclass(frozen=True)
class AlignedFormat(seq.SequenceFormat):
  """For '<a>+<b>=<answer>' with zero-padded, fixed-length answers (no eos): position ids
  restart at 0 on bos and on '+', and at 1 on '=', so digit i of either operand has id i and the
  token that predicts answer digit i has id i too: RoPE then sees the digits to add at
  distance 0."""
  eos: bool = False

  def position_ids(self, tokens, tokenizer):
    plus, equals = (int(tokenizer.encode(ch)[0]) for ch in '+=')
    tokens = np.asarray(tokens)
    slot = np.arange(len(tokens))
    restart = (tokens == plus) | (tokens == equals) | (slot == 0)  # bos restarts too.
    start = np.maximum.accumulate(np.where(restart, slot, 0))  # The segment's first slot.
    return (slot - start + (tokens[start] == equals)).astype(np.int32)

  def answer_length(self, prompt):
    return len(prompt.split('+')[0])

  def check_prompt(self, prompt):
    parts = prompt[:-1].split('+') if prompt.endswith('=') else []
    if (len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts)
        or len(parts[0]) != len(parts[1])):
      raise errors.InputError(
          f'prompt {prompt!r} is not an aligned addition problem: both operands reversed and '
          "zero-padded to the same length, then '=' (12 + 43 is '210+340=').")


def batch_format(config):
  """`config.data.addition.format` -> the SequenceFormat its records are encoded with."""
  a = config.data.addition
  if a.format == 'aligned':
    return AlignedFormat(shift=a.position_shift)
  return seq.SequenceFormat()


def aligned(fmt):
  return isinstance(fmt, AlignedFormat)


def load_splits(config, data_dir):
  """{split name: random-access source}: train, validation and test_<n> per test length, generated
  in memory (a fraction of a second; writing them as ArrayRecord took longer than the first 100
  steps). `data_dir` is unused: the problems are a pure function of config.data.addition and the
  seed, so every host makes the same ones."""
  del data_dir
  a = config.data.addition
  splits = problems.addition_splits(a.min_digits, a.max_digits, a.num_train, a.num_validation,
                                    a.num_test, list(a.test_digits), config.seed)
  return {name: pipeline.ListSource(_records(pairs, a.format == 'aligned'))
          for name, pairs in splits.items()}


def _records(pairs, is_aligned):
  return [to_record(**problems.addition_example(a, b, is_aligned),
                    digits=max(len(str(a)), len(str(b)))) for a, b in pairs]


def config_problems(config):
  """Problems of config.data.addition (and the selftrain keys that depend on it)."""
  a, m, found = config.data.addition, config.model, []
  need = lambda ok, message: None if ok else found.append(message)
  need(1 <= a.min_digits <= a.max_digits, f'config.data.addition digits range '
       f'[{a.min_digits}, {a.max_digits}] is empty or starts below 1.')
  need(a.max_digits <= 18, f'config.data.addition.max_digits={a.max_digits}: training operands '
       'are drawn as int64, so at most 18 digits (test lengths and rounds may go further).')
  need(min(a.num_train, a.num_validation, a.num_test) >= 1,
       'config.data.addition.num_train, num_validation and num_test must be >= 1.')
  need(len(a.test_digits) > 0 and min(a.test_digits) >= 1,
       f'config.data.addition.test_digits={a.test_digits} needs lengths >= 1.')
  need(a.format in ('plain', 'aligned'),
       f"config.data.addition.format={a.format!r}; choose 'plain' or 'aligned'.")
  need(a.position_shift >= 0,
       f'config.data.addition.position_shift={a.position_shift} must be >= 0.')
  if m.positions == 'learned' and len(a.test_digits):
    n = max(a.test_digits)  # bos a + b = answer eos: 3n + 5 positions.
    need(3 * n + 5 <= m.max_len, f'{n}-digit test problems need {3 * n + 5} positions but '
         f'config.model.max_len={m.max_len} (learned positions); raise it.')
  st = config.selftrain
  need(not st.target_digits or st.target_digits in a.test_digits,
       f'config.selftrain.target_digits={st.target_digits} is not among '
       'config.data.addition.test_digits, so it could never be reached; add it there.')
  need(st.operands in problems.OPERANDS,
       f'config.selftrain.operands={st.operands!r}; choose one of {problems.OPERANDS}.')
  return found


# ---- Self-training hooks: a round's level is its operand length in digits. ----

def verifier(fmt):
  """The exact check: (prompt, answer) -> is the answer the sum."""
  return lambda prompt, answer: answer == problems.addition_answer(prompt, aligned(fmt))


def swapped(prompt):
  """a + b's one equivalent prompt, b + a, in the same layout: '<A>+<B>=' -> '<B>+<A>=' (the
  operands' text is swapped whole, so aligned zero padding and position ids carry over)."""
  a, b = prompt[:-1].split('+')
  return [f'{b}+{a}=']


def consistency(config):
  """The self-consistency check (selftrain weight `consistency`): b + a must get a + b's answer."""
  del config
  return scoring.Consistency(views=swapped, same_answer=lambda x, y: x == y)


def start_level(config):
  """The digits round 1 prompts; +1 a round."""
  return config.selftrain.start_digits or config.data.addition.max_digits + 1


def train_range(config):
  a = config.data.addition
  return f'{a.min_digits}-{a.max_digits}'


def to_record(prompt, answer, digits):
  return {'prompt': prompt.encode(), 'answer': answer.encode(), 'digits': digits}


def _pairs(source):
  """(a, b) of every addition record of a source."""
  out = []
  for rec in pipeline.read_all(source):
    a, b = rec['prompt'].decode()[:-1].split('+')
    out.append((int(a[::-1]), int(b[::-1])))
  return out


def held_out_sets(config, splits, fmt):
  """({digits: validation source}, {digits: test source}, held-out (a, b) set): the test splits,
  and per test length `val_per_length` fresh problems of their own, none ever a round's prompt."""
  tests = {int(k[len('test_'):]): v for k, v in splits.items() if k.startswith('test_')}
  test_pairs = {n: _pairs(t) for n, t in tests.items()}
  held = {p for pairs in test_pairs.values() for p in pairs}
  val = {}
  for n in sorted(tests):
    rng = np.random.default_rng([config.seed, 7919, n])
    count = min(config.selftrain.val_per_length,
                (problems.operands_of_length(n) ** 2 - len(test_pairs[n])) // 2)
    pairs = problems.distinct_pairs(rng, count, lambda n=n: (n, n), held)
    held.update(pairs)
    val[n] = pipeline.ListSource(_records(pairs, aligned(fmt)))
  return val, tests, held


def round_prompts(config, r, digits, held_out, fmt):
  """Round r's prompt texts: `prompts_per_round` new problems with `digits`-digit operands (one
  of them, or both with config.selftrain.operands='both_n')."""
  rng = np.random.default_rng([config.seed, r])
  pairs = problems.draw_problems(rng, digits, config.selftrain.prompts_per_round, held_out,
                                 both=config.selftrain.operands == 'both_n')
  return [problems.addition_example(a, b, aligned(fmt))['prompt'] for a, b in pairs]


def max_answer_tokens(digits, fmt):
  """Aligned answers have digits + 1 tokens; plain ones at most that, plus eos."""
  return digits + 1 + fmt.eos


def candidate(tokens, logprobs, digits, fmt, tok):
  """A sampled continuation -> its answer text and the sources read off the sample itself."""
  answer_len = digits + 1
  if not fmt.eos:  # Fixed-length answers: the model stops by length.
    tokens, logprobs = tokens[:answer_len], logprobs[:answer_len]
  answer = tok.decode(tokens)
  probs = np.exp(logprobs)
  if fmt.eos:  # Ended with eos; n or n + 1 digits, no leading (reversed: trailing) zero.
    ended = len(tokens) > 0 and tokens[-1] == tok.eos_id
    right_form = ended and len(answer) in (digits, answer_len) and (
        answer == '0' or answer[-1] != '0')
  else:
    right_form = len(answer) == answer_len
  return {'answer': answer, 'confidence_mean': float(probs.mean()),
          'confidence_min': float(probs.min()),
          'format': float(bool(right_form) and answer.isdigit() and answer.isascii())}
