"""A seconds-long variant of the default for tests and smoke runs on a laptop CPU."""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.num_layers = 2
  c.model.d_model = 32
  c.model.mlp_dim = 64
  c.model.max_len = 32
  c.model.use_bias = False  # The golden values in tests/test_train.py are for this model.
  c.feedback.loss = 'one_minus'  # Tests exercise the feedback path (the default is plain CE).
  c.optim.feedback_scale = 'relative'
  c.data.batch_size = 16
  c.data.eval_batch_size = 32
  c.data.addition.max_digits = 3
  c.data.addition.num_train = 512
  c.data.addition.num_validation = 32
  c.data.addition.num_test = 16
  c.data.addition.test_digits = (2, 3, 4)
  c.data.addition.format = 'plain'
  c.data.addition.position_shift = 0
  c.train.num_steps = 20
  c.optim.warmup_steps = 5
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  return c
