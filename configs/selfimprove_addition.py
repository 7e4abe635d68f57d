"""Self-training on a 2-core CPU: a model trained on 1-4 digit addition teaches itself 5, 6, ...

    python launch.py --config=configs/selfimprove_addition.py --workdir=runs/selfimprove \
        --mode=selftrain

Aligned layout (operands and answer zero-padded to n + 1 digits, position ids restarting per
operand, random shifts in training), so the base model is partly right one or two digits past
its training range; each round samples greedy answers to 2,000 problems one digit longer, keeps
those the exact verifier accepts, and trains 300 steps on them mixed half and half with the
original data. A control run trains the same rounds on the original data only.
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.max_len = 128
  c.data.addition.min_digits = 1
  c.data.addition.max_digits = 4
  c.data.addition.num_train = 100_000
  c.data.addition.test_digits = tuple(range(1, 13))
  c.data.addition.format = 'aligned'
  c.data.addition.position_shift = 2
  c.train.num_steps = 1_000
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.selftrain.rounds = 8  # 6 .. 13 digits at most.
  c.selftrain.start_digits = 6  # Round 0 already solves 5 digits.
  c.selftrain.control = True
  c.selftrain.prompts_per_round = 2_000
  c.selftrain.steps_per_round = 300
  c.selftrain.target_digits = 12
  c.selftrain.target_accuracy = 0.99
  return c
