"""Generation throughput: selffb's KV-cache sampler vs a naive full forward per new token, beside
the plain-JAX yardstick (../shared/bench/bench_jax_generate.py) run in the same session.

    python bench/sampling.py [--reps 5] [--naive-reps 1] [--out bench/results/sampling.json]

Batch 16, prompt 128, 128 new tokens (greedy, no end token), on the reference shape with random
weights. tokens/s counts new tokens; every timed call includes its prefill and host transfers.
"""
import argparse
import functools
import time

import common  # pylint: disable=g-bad-import-order
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selffb import models
from selffb import sampling

BATCH, PROMPT, NEW = 16, 128, 128


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--reps', type=int, default=5)
  ap.add_argument('--naive-reps', type=int, default=1)
  ap.add_argument('--out', default='bench/results/sampling.json')
  args = ap.parse_args()
  c = common.reference_config()
  model_kind = models.get(c.model.kind)
  cfg = common.reference_model_config(c)
  model = model_kind.build(cfg)
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (BATCH, PROMPT), np.int32)
  params = nn.unbox(model.init(jax.random.key(0), jnp.asarray(prompts))['params'])
  sp = sampling.SamplingParams(max_new_tokens=NEW)

  generate = lambda: sampling.generate(params, list(prompts), model=model_kind, cfg=cfg, sp=sp,
                                       eos_id=-1, pad_id=0)
  t0 = time.perf_counter()
  generate()
  compile_kv = time.perf_counter() - t0
  kv_s, kv_out = common.timed(generate, args.reps, warmup=0)

  @functools.partial(jax.jit, donate_argnums=1)
  def naive_step(params, buf_BxL, n):
    logits_BxLxV = model.apply({'params': params}, buf_BxL)[0]['logits']
    token_B = jnp.argmax(jax.lax.dynamic_index_in_dim(logits_BxLxV, n - 1, 1, False), -1)
    return jax.lax.dynamic_update_slice(buf_BxL, token_B[:, None].astype(jnp.int32), (0, n))

  def naive():
    buf = jnp.zeros((BATCH, PROMPT + NEW), jnp.int32).at[:, :PROMPT].set(prompts)
    for n in range(PROMPT, PROMPT + NEW):
      buf = naive_step(params, buf, n)
    return np.asarray(buf[:, PROMPT:])

  t0 = time.perf_counter()
  naive_step(params, jnp.zeros((BATCH, PROMPT + NEW), jnp.int32), PROMPT).block_until_ready()
  compile_naive = time.perf_counter() - t0
  naive_s, naive_out = common.timed(naive, args.naive_reps, warmup=0)
  kv_tokens = np.stack([t for t, _ in kv_out])
  agree = float((kv_tokens == naive_out).mean())

  new = BATCH * NEW
  ours = [{'name': 'selffb_kvcache_while', 'median_s': kv_s, 'tokens_per_s': new / kv_s,
           'compile_s': compile_kv, 'agree_vs_naive': agree},
          {'name': 'selffb_naive_full_forward', 'median_s': naive_s,
           'tokens_per_s': new / naive_s, 'compile_s': compile_naive}]
  yard = common.yardstick('bench_jax_generate.py', '--naive-reps', args.naive_reps, '--reps',
                          args.reps)
  base = yard and yard['jax_generate_kvcache_scan']
  common.table(ours + (list(yard.values()) if yard else []), base)
  ratios = {'kvcache_vs_own_naive': ours[0]['tokens_per_s'] / ours[1]['tokens_per_s']}
  if yard:
    ratios['kvcache_vs_yardstick_kvcache'] = ours[0]['tokens_per_s'] / base['tokens_per_s']
    ratios['kvcache_vs_yardstick_naive'] = (ours[0]['tokens_per_s'] /
                                            yard['jax_generate_naive']['tokens_per_s'])
  print('ratios: ' + ', '.join(f'{k} {v:.2f}x' for k, v in ratios.items()))
  print(f'greedy tokens agreeing with the naive loop: {100 * agree:.1f}%')
  common.write_report(args.out, selffb=ours, yardstick=yard, ratios=ratios)


if __name__ == '__main__':
  main()
