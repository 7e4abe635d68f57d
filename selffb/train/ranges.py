"""The valid range of every numeric key of configs/default.py that no component checks itself
(the mesh sizes, the addition task's keys, the optimizer's feedback scale and the sampling
settings are checked where they are read). A NaN is never in range."""
import math

INF = math.inf
# key: (low, high, low included, high included).
RANGES = {
    'seed': (0, INF, True, False),
    'model.num_layers': (1, INF, True, False),
    'model.num_heads': (1, INF, True, False),
    'model.d_model': (1, INF, True, False),
    'model.mlp_dim': (1, INF, True, False),
    'model.rope_base': (0, INF, False, False),
    'model.max_len': (1, INF, True, False),
    'model.dropout': (0, 1, True, False),
    'data.batch_size': (1, INF, True, False),
    'data.eval_batch_size': (1, INF, True, False),
    'data.seq_len': (0, INF, True, False),
    'data.text.validation_fraction': (0, 1, False, False),
    'feedback.gamma': (0, INF, True, False),
    'optim.lr': (0, INF, True, False),
    'optim.warmup_steps': (0, INF, True, False),
    'optim.final_lr_ratio': (0, 1, True, True),
    'optim.decay_fraction': (0, 1, False, True),
    'optim.b1': (0, 1, True, False),
    'optim.b2': (0, 1, True, False),
    'optim.eps': (0, INF, False, False),
    'optim.weight_decay': (0, INF, True, False),
    'optim.clip_norm': (0, INF, True, False),
    'train.num_steps': (1, INF, True, False),
    'train.log_every': (1, INF, True, False),
    'train.eval_every': (1, INF, True, False),
    'train.checkpoint_every': (1, INF, True, False),
    'train.max_checkpoints': (1, INF, True, False),
    'train.patience': (0, INF, True, False),
    'train.grad_accum_steps': (1, INF, True, False),
    'train.max_nonfinite_steps': (1, INF, True, False),
    'sample.seed': (0, INF, True, False),
    'selftrain.rounds': (0, INF, True, False),
    'selftrain.start_digits': (0, INF, True, False),
    'selftrain.prompts_per_round': (1, INF, True, False),
    'selftrain.samples_per_prompt': (1, INF, True, False),
    'selftrain.temperature': (0, INF, True, False),
    'selftrain.top_k': (0, INF, True, False),
    'selftrain.theta': (0, 1, True, True),
    'selftrain.keep_top_fraction': (0, 1, False, True),
    'selftrain.mix': (0, 1, True, False),
    'selftrain.max_self_examples': (0, INF, True, False),
    'selftrain.steps_per_round': (1, INF, True, False),
    'selftrain.lr': (0, INF, False, False),
    'selftrain.warmup_steps': (0, INF, True, False),
    'selftrain.val_per_length': (1, INF, True, False),
    'selftrain.target_digits': (0, INF, True, False),
    'selftrain.target_accuracy': (0, 1, True, True),
    'selftrain.patience': (0, INF, True, False),
}


def describe(key):
  low, high, low_in, high_in = RANGES[key]
  return f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _inside(value, low, high, low_in, high_in):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
    return False
  return (low <= value if low_in else low < value) and (value <= high if high_in else value < high)


def problems(config):
  """A message for every key of RANGES whose value is not a number in its range."""
  found = []
  for key, bounds in RANGES.items():
    node = config
    for part in key.split('.'):
      node = node[part]
    if not _inside(node, *bounds):
      found.append(f'config.{key}={node!r} must be a number in {describe(key)}.')
  return found
