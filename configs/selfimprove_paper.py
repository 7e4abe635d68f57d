"""Paper scale, for a GPU: Lee et al. (ICML 2025), "Self-Improving Transformers Overcome
Easy-to-Hard and Length Generalization Challenges".

    python launch.py --config=configs/selfimprove_paper.py --workdir=runs/paper --mode=selftrain

Their setting: 6 layers, d_model 384, 6 heads, no positional encoding, reversed addition trained
on 1 to 16 digits; every round prompts one more digit, self-labels 50,000 problems and trains
about 1,000 more steps on them together with everything before; filters without ground truth
(answer length, agreement). Here agreement is a unanimous vote of 4 samples per prompt and the
length filter is the `format` source; the exact verifier only measures label precision. Untested
at this scale so far (no GPU was lent); the CPU config is configs/selfimprove_addition.py.
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.d_model = 384
  c.model.mlp_dim = 1536
  c.model.positions = 'none'
  c.model.max_len = 320  # 100-digit problems: bos + 100 + 1 + 100 + 1 + 101 + eos.
  c.model.dtype = 'bfloat16'
  c.data.batch_size = 1024
  c.data.eval_batch_size = 1000
  c.data.addition.min_digits = 1
  c.data.addition.max_digits = 16
  c.data.addition.num_train = 2_000_000
  c.data.addition.test_digits = (8, 16, 17, 18, 20, 24, 32, 48, 64, 80, 100)
  c.data.addition.format = 'plain'
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 1_000
  c.train.num_steps = 10_000
  c.train.eval_every = 1_000
  c.train.checkpoint_every = 1_000
  c.train.log_every = 100
  c.selftrain.rounds = 84  # 17 .. 100 digits.
  c.selftrain.start_digits = 17
  c.selftrain.prompts_per_round = 50_000
  c.selftrain.samples_per_prompt = 4
  c.selftrain.temperature = 0.7
  c.selftrain.weights.verifier = 0.0
  c.selftrain.weights.format = 1.0
  c.selftrain.weights.vote = 1.0
  c.selftrain.theta = 1.0  # Well formed and all 4 samples agree.
  c.selftrain.mix = 0.5
  c.selftrain.steps_per_round = 1_000
  c.selftrain.lr = 5e-4
  c.selftrain.warmup_steps = 100
  c.selftrain.val_per_length = 500
  c.selftrain.target_digits = 100
  c.selftrain.patience = 5
  c.selftrain.control = False  # A control run is another 84k steps; enable it to compare.
  return c
