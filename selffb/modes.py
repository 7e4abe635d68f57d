"""The checkpoint-reading modes of launch.py: `eval` (report) and `sample` (continue prompts)."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from selffb import checkpoint
from selffb import data
from selffb import evaluation
from selffb import model as model_lib
from selffb import sampling
from selffb import sharding
from selffb import train
from selffb import validate


def checkpoint_dir(workdir):
  """Where a workdir's model is: the workdir itself, or for a self-training run the last
  finished round with checkpoints (rounds/rNN; r00 has none when it came from init_workdir)."""
  rounds = os.path.join(workdir, 'rounds')
  if os.path.isdir(rounds):
    done = sorted((d for d in os.listdir(rounds)
                   if os.path.exists(os.path.join(rounds, d, 'report.json'))
                   and os.path.isdir(os.path.join(rounds, d, 'checkpoints'))),
                  key=lambda d: int(d[1:]) if d[1:].isdigit() else -1)
    if done:
      logging.info('self-training run: using the last finished round, %s', done[-1])
      return os.path.join(rounds, done[-1])
  return workdir


def restore_best_params(config, workdir, model_cfg, mesh):
  """(step, best params, loop state) of workdir's newest checkpoint, restored straight into the
  shardings the logical-axis rules give them; only the parameters are read."""
  boxed = jax.eval_shape(lambda: model_lib.Transformer(model_cfg).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  shardings = sharding.state_shardings(boxed, mesh, sharding.logical_rules(config.mesh))
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          nn.unbox(boxed), shardings)
  restored = checkpoint.restore_params(
      checkpoint.make_manager(workdir, config.train.max_checkpoints), abstract)
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints; train first with '
                            f'--mode=train --workdir={workdir}.')
  return restored


def evaluate_checkpoint(config, workdir):
  """Reports validation metrics and greedy exact match of the latest checkpoint's best params."""
  s = train.setup(config, workdir)
  step, best_params, loop = restore_best_params(config, checkpoint_dir(workdir), s.model_cfg,
                                                s.mesh)
  p_eval = evaluation.jit_eval_step(s)
  val_batches = data.eval_batches(s.splits['validation'], s.tokenizer,
                                  config.data.eval_batch_size, s.layout)
  val = evaluation.evaluate(p_eval, best_params, val_batches, s.mesh)
  report = evaluation.report_exact_match(s, best_params, config.data.eval_batch_size)
  logging.info('checkpoint step %d (best params from step %d): val %s', step,
               loop['best_step'], {k: round(v, 4) for k, v in val.items()})
  for k, v in report.items():
    logging.info('  %3s digits: %6.2f%% greedy exact match', k, 100 * v)
  return {'step': step, 'validation': val, 'exact_match': report}


def sample_checkpoint(config, workdir, texts):
  """Continues each text with the latest checkpoint's best parameters under `config.sample`."""
  validate.check_config(config)
  model_cfg = model_lib.ModelConfig.from_config(config.model)
  sp = sampling.SamplingParams.from_config(config.sample)
  if not texts:
    raise ValueError('no prompts: pass --prompt="..." (repeatable) or --prompts_file=PATH.')
  mesh = sharding.make_mesh(config.mesh)
  step, params, _ = restore_best_params(config, checkpoint_dir(workdir), model_cfg, mesh)
  tokenizer = data.ByteTokenizer()
  layout = data.layout_of(config.data)
  prompts = [tokenizer.encode_prompt(t) for t in texts]
  outs = sampling.generate(params, prompts, cfg=model_cfg, sp=sp, eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, seed=config.sample.seed, mesh=mesh,
                           positions=[layout.position_ids(p, tokenizer) for p in prompts])
  samples = []
  for text, (tokens, logprobs) in zip(texts, outs):
    n = layout.answer_length(text)
    if n is not None:  # Fixed-length answers: the model stops by length, not with eos.
      tokens, logprobs = tokens[:n], logprobs[:n]
    samples.append({'prompt': text, 'completion': tokenizer.decode(tokens),
                    'ended': n is not None or bool(tokens[-1] == tokenizer.eos_id),
                    'mean_logprob': float(np.mean(logprobs)), 'tokens': len(tokens)})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'samples.jsonl'), 'a') as f:
      for row in samples:
        f.write(json.dumps({'step': step, **dataclasses.asdict(sp), 'seed': config.sample.seed,
                            **row}) + '\n')
  logging.info('samples from step %d (%s, seed %d):\n%s', step, sp, config.sample.seed,
               '\n'.join(f"{r['prompt']!r} -> {r['completion']!r}"
                         f"{'' if r['ended'] else ' ...'} (mean logprob {r['mean_logprob']:.3f})"
                         for r in samples))
  return samples


