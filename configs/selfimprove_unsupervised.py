"""Self-improvement without ground truth, on a 2-core CPU: the default model, trained on 1-4
digits, labels its own answers with no verifier, on the schedule of Lee et al. (ICML 2025):
each round prompts one digit past the longest length it has trained on (5, 6, 7), keeps every
greedy answer of the right form (the length filter), and trains on them mixed half and half
with the original data. A control run trains the same rounds on the original data only.

    python launch.py --config=configs/selfimprove_unsupervised.py \
        --workdir=runs/selfimprove_unsupervised --mode=selftrain

The best of the unsupervised configurations tried (configs/ablations/unsupervised.py and
filters.py; docs/selftrain.md, "Which filter?"), and it does NOT improve the model: a model's own
greedy answers are its own fixed point, and at this scale its confident and unanimous answers
past its range share systematic errors, so neither more prompts, a majority vote nor a
confidence threshold removes them. The exact check still measures each round's label
precision. Kept as the starting point for what might (a filter that sees something the model
does not, e.g. agreement between a + b and b + a, or the paper's scale in
configs/selfimprove_paper.py).
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.selftrain.rounds = 3
  c.selftrain.prompts_per_round = 2_000  # As run: before the default took 8,000 and 400.
  c.selftrain.steps_per_round = 300
  c.selftrain.start_digits = 0  # data.addition.max_digits + 1 = 5, then 6, 7.
  c.selftrain.weights.verifier = 0.0
  c.selftrain.weights.format = 1.0  # The answer has the task's form: digits, the right length.
  c.selftrain.theta = 1.0
  c.selftrain.control = True
  return c
