"""Seed 000 as written, for comparison with the default: its loss (section 5.2.2: per-token CE times
1 - p_t, p_t the softmax probability of the target, not detached, so the gradient flows through
it) and its optimizer (section 5.2.3: plain Adam, lr 1e-3, betas (0.9, 0.98), eps 1e-9; torch's Adam
has no clipping and no weight decay, and the seed sets no schedule), on the default task.

    python launch.py --config=configs/seed_literal.py --workdir=runs/seed_literal

The seed leaves `criterion` and the padding undefined: selffb keeps its answer-token mask.
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.feedback.loss = 'one_minus_p'  # CE * (1 - p_t), p_t with its gradient.
  c.feedback.weights.prob = 1.0  # F (logged as mean_f) is p_t too, as the seed's feedback.
  c.optim.lr = 1e-3
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-9
  c.optim.schedule = 'constant'
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 0.0
  c.optim.feedback_scale = 'none'
  return c
