"""The valid range of every numeric key of configs/default.py that no component checks itself
(the mesh sizes, the addition task's keys, the optimizer's feedback scale and the sampling
settings are checked where they are read). A NaN is never in range."""
import math

INF = math.inf
# Intervals as (low, high, low included, high included).
AT_LEAST_0 = (0, INF, True, False)  # [0, inf)
AT_LEAST_1 = (1, INF, True, False)  # [1, inf)
POSITIVE = (0, INF, False, False)  # (0, inf)
UNIT = (0, 1, True, True)  # [0, 1]
FRACTION = (0, 1, True, False)  # [0, 1)
SHARE = (0, 1, False, True)  # (0, 1]
OPEN_UNIT = (0, 1, False, False)  # (0, 1)
RANGES = {
    'seed': AT_LEAST_0,
    'model.num_layers': AT_LEAST_1,
    'model.num_heads': AT_LEAST_1,
    'model.d_model': AT_LEAST_1,
    'model.mlp_dim': AT_LEAST_1,
    'model.rope_base': POSITIVE,
    'model.max_len': AT_LEAST_1,
    'model.dropout': FRACTION,
    'model.num_labels': AT_LEAST_0,
    'model.norm_eps': POSITIVE,
    'model.type_vocab_size': AT_LEAST_0,
    'data.mlm.rate': SHARE,
    'data.mlm.mask': UNIT,
    'data.mlm.random': UNIT,
    'data.labelled.num_train': AT_LEAST_1,
    'data.labelled.num_validation': AT_LEAST_1,
    'data.labelled.num_test': AT_LEAST_1,
    'data.batch_size': AT_LEAST_1,
    'data.eval_batch_size': AT_LEAST_1,
    'data.seq_len': AT_LEAST_0,
    'data.text.validation_fraction': OPEN_UNIT,
    'data.workers': AT_LEAST_0,
    'data.text.shuffle_window': AT_LEAST_0,
    'data.text.eval_sequences': AT_LEAST_1,
    'data.sentencepiece.max_sentences': AT_LEAST_1,
    'data.feedback.validation_fraction': OPEN_UNIT,
    'data.feedback.example_prompts': AT_LEAST_1,
    'feedback.gamma': AT_LEAST_0,
    'feedback.blend_fraction': SHARE,
    'optim.lr': AT_LEAST_0,
    'optim.warmup_steps': AT_LEAST_0,
    'optim.final_lr_ratio': UNIT,
    'optim.decay_fraction': SHARE,
    'optim.b1': FRACTION,
    'optim.b2': FRACTION,
    'optim.eps': POSITIVE,
    'optim.weight_decay': AT_LEAST_0,
    'optim.clip_norm': AT_LEAST_0,
    'optim.top_k': AT_LEAST_1,
    'train.num_steps': AT_LEAST_1,
    'train.log_every': AT_LEAST_1,
    'train.eval_every': AT_LEAST_1,
    'train.checkpoint_every': AT_LEAST_1,
    'train.max_checkpoints': AT_LEAST_1,
    'train.patience': AT_LEAST_0,
    'train.grad_accum_steps': AT_LEAST_1,
    'train.max_nonfinite_steps': AT_LEAST_1,
    'sample.seed': AT_LEAST_0,
    'selftrain.rounds': AT_LEAST_0,
    'selftrain.start_digits': AT_LEAST_0,
    'selftrain.prompts_per_round': AT_LEAST_1,
    'selftrain.samples_per_prompt': AT_LEAST_1,
    'selftrain.temperature': AT_LEAST_0,
    'selftrain.top_k': AT_LEAST_0,
    'selftrain.theta': UNIT,
    'selftrain.keep_top_fraction': SHARE,
    'selftrain.mix': FRACTION,
    'selftrain.max_self_examples': AT_LEAST_0,
    'selftrain.steps_per_round': AT_LEAST_1,
    'selftrain.lr': POSITIVE,
    'selftrain.warmup_steps': AT_LEAST_0,
    'selftrain.val_per_length': AT_LEAST_1,
    'selftrain.target_digits': AT_LEAST_0,
    'selftrain.target_accuracy': UNIT,
    'selftrain.patience': AT_LEAST_0,
    'selftrain.base_weight': POSITIVE,
    'selftrain.decay_fraction': SHARE,
    'slurm.nodes': AT_LEAST_1,
    'slurm.gpus_per_node': AT_LEAST_0,
    'slurm.cpus_per_task': AT_LEAST_1,
    'slurm.mem_gb': AT_LEAST_0,
    'slurm.timeout_min': AT_LEAST_1,
    'slurm.array_parallelism': AT_LEAST_1,
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
