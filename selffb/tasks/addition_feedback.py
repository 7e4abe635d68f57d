"""An example feedback file made from the addition task, so `--mode=finetune` runs offline: the
starting model's answers to new problems (or, from scratch, answers that are right or off by one
digit) rated, labelled and corrected by the exact check, and pairs of right and wrong answers.

Problem i gets record kind i mod 4 (on config.data.feedback's scale and labels, default 1..5 and
good/bad):
  rating      the best rating for the sum, a quarter of the way up the scale (2 of 1..5) for a
              wrong answer with at least half its digits right, the worst for the rest;
  label       the label of the highest signal ('good') for the sum, of the lowest ('bad') else;
  correction  a wrong answer with the sum as its correction (a right answer gets rating 5);
  pair        chosen the sum, rejected the wrong answer (a right answer: the sum off by a digit).
"""
import numpy as np

from selffb.feedback import records
from selffb.tasks import addition_problems as problems

KINDS = ('rating', 'label', 'correction', 'pair')


def off_by_a_digit(answer, rng):
  """`answer` with one digit moved by +-1, as a dropped or spurious carry would."""
  digits = list(answer)
  i = int(rng.integers(len(digits)))
  digits[i] = str((int(digits[i]) + int(rng.choice([1, 9]))) % 10)
  return ''.join(digits)


def digit_accuracy(answer, right):
  """The share of the sum's digits the answer has right, position by position."""
  return sum(a == b for a, b in zip(answer, right)) / len(right)


def record(kind, prompt, response, right, rng, rules=records.Rules()):
  """One JSONL record of `kind` for an answer `response` to `prompt` whose sum is `right`."""
  ok = response == right
  (lo, hi), labels = rules.rating_scale, sorted(rules.labels, key=lambda x: x[1])
  if kind == 'rating' or (kind == 'correction' and ok):
    partial = digit_accuracy(response, right) >= 0.5
    return {'prompt': prompt, 'response': response,
            'rating': hi if ok else lo + (hi - lo) / 4 if partial else lo}
  if kind == 'label':
    return {'prompt': prompt, 'response': response, 'label': labels[-1 if ok else 0][0]}
  if kind == 'correction':
    return {'prompt': prompt, 'response': response, 'correction': right}
  return {'prompt': prompt, 'chosen': right,
          'rejected': off_by_a_digit(right, rng) if ok else response}


def example_problems(config):
  """Problems of config.data.feedback.example_digits and example_prompts: operand lengths of
  1..18 digits (drawn as int64), each with room for its share of the prompts."""
  c = config.data.feedback
  digits = c.example_digits
  if (not isinstance(digits, (list, tuple)) or not digits or not all(
      isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 18 for d in digits)):
    return [f'config.data.feedback.example_digits={digits!r}: a non-empty tuple of operand '
            'lengths from 1 to 18.']
  share = -(-c.example_prompts // len(digits))  # The most prompts one length gets.
  room = lambda d: problems.operands_of_length(d) * 10 ** d // 2
  return [f'config.data.feedback.example_digits={tuple(digits)!r}: {d}-digit operands make at '
          f'most {room(d)} problems, fewer than the {share} of example_prompts='
          f'{c.example_prompts} each length gets; lower it or use longer operands.'
          for d in digits if isinstance(c.example_prompts, int) and share > room(d)]


def example_feedback(config, answer_fn=None):
  """Records for config.data.feedback.example_prompts new problems of example_digits (never a
  test problem). `answer_fn(prompts, max_new_tokens) -> texts` is the starting model's greedy
  answer; None (from scratch) answers right or off by a digit, half and half."""
  a, c = config.data.addition, config.data.feedback
  is_aligned, rules = a.format == 'aligned', records.Rules.from_config(c)
  splits = problems.addition_splits(a.min_digits, a.max_digits, a.num_train, a.num_validation,
                                    a.num_test, list(a.test_digits), config.seed)
  held = {p for name, pairs in splits.items() if name.startswith('test_') for p in pairs}
  rng = np.random.default_rng([config.seed, 4243])
  digits = list(c.example_digits)
  out = []
  for i, d in enumerate(digits):
    count = c.example_prompts // len(digits) + (i < c.example_prompts % len(digits))
    examples = [problems.addition_example(x, y, is_aligned)
                for x, y in problems.draw_problems(rng, d, count, held)]
    prompts, rights = [e['prompt'] for e in examples], [e['answer'] for e in examples]
    if answer_fn is None:
      responses = [r if rng.random() < 0.5 else off_by_a_digit(r, rng) for r in rights]
      source = 'synthetic'
    else:
      responses = answer_fn(prompts, d + 1 + (not is_aligned))
      if is_aligned:  # Fixed-length answers: the model stops by length.
        responses = [t[:d + 1] for t in responses]
      source = 'model'
    for prompt, response, right in zip(prompts, responses, rights):
      kind = KINDS[len(out) % len(KINDS)]
      if not response.strip():  # The model ended at once: there is nothing to rate.
        response = '?'
      got = record(kind, prompt, response, right, rng, rules)
      what = next(k for k in ('rating', 'label', 'correction', 'pair')
                  if k in got or (k == 'pair' and 'chosen' in got))
      out.append({'id': f'ex{len(out)}', 'source': f'{source}:{what}', **got})
  return out
