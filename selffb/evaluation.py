"""Evaluation: teacher-forced metrics of a split, and greedy-decoding exact match."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from selffb import data
from selffb import feedback
from selffb import model as model_lib
from selffb import sampling
from selffb import sharding
from selffb import xla_flags

EVAL_KEYS = ('inputs', 'targets', 'positions', 'loss_mask', 'valid')


def eval_step(params, batch, *, model):
  """Sums over a batch's valid rows: CE, correct tokens, tokens, exact sequences, sequences.

  A sequence is exact when every loss token is the argmax under teacher forcing, which is
  exactly when greedy decoding reproduces the answer.
  """
  logits_BxTxV, _ = model.apply({'params': params}, batch['inputs'], batch.get('positions'))
  mask_BxT = batch['loss_mask'] * batch['valid'][:, None]
  ce_BxT = -feedback.target_logprob(logits_BxTxV, batch['targets'])
  correct_BxT = jnp.argmax(logits_BxTxV, -1) == batch['targets']
  exact_B = jnp.all(correct_BxT | (batch['loss_mask'] == 0), axis=-1) * batch['valid']
  return {'ce': jnp.sum(ce_BxT * mask_BxT), 'correct': jnp.sum(correct_BxT * mask_BxT),
          'tokens': jnp.sum(mask_BxT), 'exact': jnp.sum(exact_B), 'sequences': jnp.sum(
              batch['valid'])}


def jit_eval_step(s, params_sharding=None):
  """eval_step jitted for Setup `s` with its XLA options; sharded like the training state when
  `params_sharding` is given, else placed by its inputs."""
  shardings = {} if params_sharding is None else dict(
      in_shardings=(params_sharding, sharding.batch_sharding(s.mesh)),
      out_shardings=sharding.replicated(s.mesh))
  return jax.jit(functools.partial(eval_step, model=model_lib.Transformer(s.model_cfg)),
                 compiler_options=xla_flags.for_mesh(s.config, s.mesh), **shardings)


def evaluate(eval_fn, params, batches, mesh):
  """Teacher-forced metrics of a split: ce, perplexity, token accuracy, exact match."""
  sums = [eval_fn(params, sharding.put_global(mesh, {k: b[k] for k in EVAL_KEYS if k in b}))
          for b in batches]
  total = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(sums))
  ce = total['ce'] / max(total['tokens'], 1)
  return {'ce': ce, 'perplexity': float(np.exp(ce)),
          'accuracy': total['correct'] / max(total['tokens'], 1),
          'exact': total['exact'] / max(total['sequences'], 1)}


def greedy_exact_match(params, sources, tokenizer, cfg, batch_size, mesh=None,
                       layout=data.Layout()):
  """Greedy-decoding exact match per split. Every batch has one shape (prompt bucket, batch
  size, new tokens), so the sampler compiles once. With an eos layout an answer must end with
  eos; otherwise its first len(answer) tokens must be the answer."""
  records = {name: list(data.read_all(src)) for name, src in sources.items()}
  prompts = {name: [tokenizer.encode_prompt(r['prompt']) for r in rs]
             for name, rs in records.items()}
  positions = {name: [layout.position_ids(p, tokenizer) for p in ps]
               for name, ps in prompts.items()}
  prompt_len = sampling.bucket(max(len(p) for ps in prompts.values() for p in ps))
  sp = sampling.SamplingParams(max_new_tokens=layout.eos + max(
      len(r['answer']) for rs in records.values() for r in rs))
  fill = lambda xs: xs + [xs[0]] * (batch_size - len(xs))  # One shape: one compile.
  results = {}
  for name, rs in records.items():
    correct = 0
    for start in range(0, len(rs), batch_size):
      outs = sampling.generate(params, fill(prompts[name][start:start + batch_size]), cfg=cfg,
                               sp=sp, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               mesh=mesh, prompt_len=prompt_len,
                               positions=fill(positions[name][start:start + batch_size]))
      for r, (tokens, _) in zip(rs[start:start + batch_size], outs):
        answer = r['answer'].decode()
        if layout.eos:
          correct += bool(tokens[-1] == tokenizer.eos_id and tokenizer.decode(tokens) == answer)
        else:
          correct += tokenizer.decode(tokens[:len(answer)]) == answer
    results[name] = correct / len(rs)
  return results


def report_exact_match(s, params, batch_size):
  """Greedy exact match per test length, as {'<digits>': fraction}, shortest first."""
  tests = {int(k[len('test_'):]): v for k, v in s.splits.items() if k.startswith('test_')}
  if not tests:
    return {}
  result = greedy_exact_match(params, tests, s.tokenizer, s.model_cfg, batch_size, s.mesh,
                              s.layout)
  return {str(n): result[n] for n in sorted(result)}
