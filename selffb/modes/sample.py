"""--mode=sample: continue prompts with a run's best parameters under config.sample."""
import dataclasses
import json
import os

import jax
import numpy as np
from absl import logging

from selffb import errors
from selffb import sampling
from selffb.assemble import setup as setup_lib
from selffb.modes import run_config
from selffb.modes import selftrain
from selffb.train import state as state_lib


def _complete(s, texts, outs):
  """One row per prompt: the completion, cut at the task's answer length where it has one."""
  tok, rows = s.tokenizer, []
  for text, (tokens, logprobs) in zip(texts, outs):
    n = s.fmt.answer_length(text)
    if n is not None:  # Fixed-length answers: the model stops by length, not with eos.
      tokens, logprobs = tokens[:n], logprobs[:n]
    rows.append({'prompt': text, 'completion': tok.decode(tokens),
                 'ended': n is not None or bool(tokens[-1] == tok.eos_id),
                 'mean_logprob': float(np.mean(logprobs)), 'tokens': len(tokens)})
  return rows


def sample_checkpoint(config, workdir, texts):
  """Continues each text with the latest checkpoint's best parameters, under the run's own
  config (`config`, if given, may change only run_config.CHANGEABLE keys); appends the samples
  to workdir/samples.jsonl and returns them."""
  config = run_config.load(config, workdir)
  s = setup_lib.setup(config, workdir, with_data=False)
  sp = sampling.SamplingParams.from_config(config.sample)
  if not texts:
    raise errors.InputError('no prompts: pass --prompt="..." (repeatable) or --prompts_file=PATH.')
  for text in texts:  # Every prompt is checked before the checkpoint is read.
    s.fmt.check_prompt(text)
    n = s.fmt.answer_length(text)
    if n is not None and n > sp.max_new_tokens:
      raise errors.InputError(
          f'prompt {text!r} has a {n}-token answer but config.sample.max_new_tokens='
          f'{sp.max_new_tokens} would cut it; raise it (--config.sample.max_new_tokens={n}).')
  prompts = [s.tokenizer.encode_prompt(t) for t in texts]
  s.model.check_decode(s.model_cfg, max(len(p) for p in prompts), sp.max_new_tokens)
  step, params, _ = state_lib.restore_best_params(s, selftrain.model_dir(workdir))
  outs = sampling.generate(params, prompts, model=s.model, cfg=s.model_cfg, sp=sp,
                           eos_id=s.tokenizer.eos_id, pad_id=s.tokenizer.pad_id,
                           seed=config.sample.seed, mesh=s.mesh,
                           positions=[s.fmt.position_ids(p, s.tokenizer) for p in prompts])
  samples = _complete(s, texts, outs)
  logging.info('samples from step %d (%s, seed %d):\n%s', step, sp, config.sample.seed,
               '\n'.join(f"{r['prompt']!r} -> {r['completion']!r}"
                         f"{'' if r['ended'] else ' ...'} (mean logprob {r['mean_logprob']:.3f})"
                         for r in samples))
  path = os.path.join(workdir, 'samples.jsonl')
  if jax.process_index() == 0:
    try:  # After printing them: the samples are never lost to an unwritable workdir.
      with open(path, 'a') as f:
        for row in samples:
          f.write(json.dumps({'step': step, **dataclasses.asdict(sp),
                              'seed': config.sample.seed, **row}) + '\n')
    except OSError as e:
      logging.warning('the samples above were not appended to %s: %s', path, e)
  return samples
