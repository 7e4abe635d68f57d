"""Fine-tuning from recorded feedback (`--mode=finetune`): ratings, labels, corrections and
preference pairs in a JSONL file (selffb/feedback/records.py) train the default model.

Without a file (data.feedback.train_path) the run writes an example first: 2,000 new 5- and
6-digit addition problems, answered by the starting model (finetune.init_workdir, e.g. a
`--mode=train` run of configs/default.py) or, from scratch, right or off by a digit; rated,
labelled and corrected by the exact check, and paired right against wrong (tasks/
addition_feedback.py). Ratings and labels are F's `rating` source and the loss is CE * F, so a
response is learned in proportion to how well it was rated; corrections are learned with weight
1; pairs and corrections against the responses they replaced train DPO against the starting
parameters (beta 0.1).
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.task = 'feedback'
  c.data.feedback.base_task = 'addition'  # The aligned addition format of the default model.
  c.data.feedback.correction_pairs = True  # A correction is also preferred to what it replaced.
  c.feedback.loss = 'confidence'  # CE * F: the rating weights each response's tokens.
  c.feedback.weights.prob = 0.0
  c.feedback.weights.rating = 1.0
  c.data.batch_size = 64
  c.train.num_steps = 300
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 20
  c.data.addition.test_digits = (4, 5, 6, 7)
  return c
