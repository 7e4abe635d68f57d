"""Train-step throughput and MFU of selffb, beside the plain-JAX yardstick.

    python bench/train_throughput.py [--steps 10] [--set model.dtype=bfloat16 ...] [--phases]
        [--torch-python /path/to/venv/bin/python] [--out bench/results/train_throughput.json]

Reference shape: 4 layers, 4 heads, d_model 256, seq 256, batch 16, vocabulary 256, float32.
selffb runs its real `train_step` (feedback loss, the full Optax chain) with learned positions,
LayerNorm, GELU and tied embeddings, as the yardstick (../shared/bench/bench_jax_train.py, plain
JAX + optax) has; both run in this one session and the ratio is printed and saved. With
`--torch-python` (an interpreter with torch and transformers, never a selffb dependency) the
PyTorch peers run too: Hugging Face GPT2LMHeadModel, and nanoGPT's GPT when its model.py is at
$PEER_DIR/nanogpt_model.py (default ~/.cache/selffb-peers), both eager. `--set` overrides any
key of the config. MFU = (6 N B T + 12 L d T^2 B) / step time / peak, with N without position
embeddings and the peak measured here by a 2048^2 float32 matmul.
The peak is the faster of that matmul under XLA's defaults and under selffb's step compiler
options (selffb/xla_flags.py). selffb keeps freed host memory (selffb/host_memory.py,
`train.reuse_host_memory`). The yardstick runs as plain JAX (XLA's defaults) and once more
under selffb's process settings: its options as XLA_FLAGS and its malloc settings; the PyTorch
peers run under the malloc settings too. `--phases` also times selffb's loss alone and the loss
with its gradients, compiled as the step is, and splits the step into forward, backward and the
rest (the optimizer update and the metrics) by difference, so with few `--steps` the rest can
come out below zero: noise.
"""
import argparse
import ast
import functools
import itertools
import os
import time

import common  # pylint: disable=g-bad-import-order
import jax
import jax.numpy as jnp
import numpy as np

from selffb import data
from selffb import host_memory
from selffb import model as model_lib
from selffb import optim
from selffb import sharding
from selffb import train
from selffb import xla_flags


def peak_flops(options, n=2048, reps=20):
  """The faster of a float32 n^2 matmul compiled with XLA's defaults and with `options`."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  meds = []
  for opts in ({}, options) if options else ({},):
    matmul = jax.jit(lambda x: x @ a, compiler_options=opts)
    meds.append(common.timed(lambda: matmul(a).block_until_ready(), reps, warmup=2)[0])
  return 2 * n ** 3 / min(meds)


def model_flops(c, n_params):
  m, b, t = c.model, c.data.batch_size, c.data.seq_len
  n = n_params - (m.max_len * m.d_model if m.positions == 'learned' else 0)
  return 6 * n * b * t + 12 * m.num_layers * m.d_model * t * t * b


def config_with(loss, overrides):
  c = common.reference_config()
  c.data.update(batch_size=16, seq_len=256)
  c.feedback.loss = loss
  for item in overrides:
    key, value = item.split('=', 1)
    *path, leaf = key.split('.')
    node = c
    for p in path:
      node = node[p]
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A plain string.
    node[leaf] = value
  return c


def time_phases(s, params, batch, steps, warmup):
  """Median seconds of the training loss alone and of the loss with its gradients, jitted with
  the step's compiler options and the batch as an argument, as in `train.train_step`."""
  loss = functools.partial(train.loss_fn, model=train.training_model(s), fb=s.fb)
  of_params = lambda p, bt: loss(p, bt, jax.random.key(1), jnp.sum(bt['loss_mask']))[0]
  opts = xla_flags.for_mesh(s.config, s.mesh)
  forward = jax.jit(of_params, compiler_options=opts)
  backward = jax.jit(jax.grad(of_params), compiler_options=opts)
  return [common.timed(lambda f=f: jax.block_until_ready(f(params, batch)), steps, warmup)[0]
          for f in (forward, backward)]


def time_selffb(c, steps, warmup, peak, phases=False):
  b, t, v = c.data.batch_size, c.data.seq_len, c.model.vocab_size
  s = train.Setup(config=c, model_cfg=model_lib.ModelConfig.from_config(c.model),
                  tokenizer=data.ByteTokenizer(), layout=data.Layout(), splits={}, seq_len=t,
                  mesh=sharding.make_mesh(c.mesh, jax.devices()[:1]),
                  tx=optim.make_optimizer(c.optim, c.train.num_steps),
                  fb=train.FeedbackSpec.from_config(c.feedback))
  state, state_sh = train.init_state(s, jax.random.key(0))
  p_train, _ = train.compile_steps(s, state_sh)
  rng = np.random.default_rng(0)
  batches = [sharding.put_batch(s.mesh, {
      'inputs': rng.integers(3, v, (b, t), dtype=np.int32),
      'targets': rng.integers(3, v, (b, t), dtype=np.int32),
      'loss_mask': np.ones((b, t), np.float32)}) for _ in range(4)]
  t0 = time.perf_counter()
  state, m = p_train(state, batches[0], jax.random.key(1))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  i = itertools.count()

  def step():
    nonlocal state
    state, m = p_train(state, batches[next(i) % 4], jax.random.key(1))
    return jax.block_until_ready(m)

  med, m = common.timed(step, steps, warmup)
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  flops = model_flops(c, n_params)
  result = {'name': f'selffb_train_{c.feedback.loss}', 'median_s': med,
            'tokens_per_s': b * t / med, 'compile_s': compile_s, 'n_params': n_params,
            'model_gflop_per_step': flops / 1e9, 'mfu_pct': 100 * flops / med / peak,
            'loss_last': float(m['loss'])}
  if phases and c.train.grad_accum_steps > 1:
    print('--phases skipped: they time the whole batch at once, and this step accumulates '
          f'{c.train.grad_accum_steps} microbatches')
  elif phases:
    fwd, fwd_bwd = time_phases(s, state.params, batches[0], steps, warmup)
    result['phases_s'] = {'forward': fwd, 'backward': fwd_bwd - fwd, 'rest': med - fwd_bwd}
    print(f'{result["name"]} phases: ' + ', '.join(
        f'{k} {v:.3f} s ({100 * v / med:.0f}%)' for k, v in result['phases_s'].items()))
  return result


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--warmup', type=int, default=3)
  ap.add_argument('--set', action='append', default=[], help='config override key=value')
  ap.add_argument('--phases', action='store_true',
                  help='also split the selffb step into forward, backward and the rest')
  ap.add_argument('--torch-python', default='',
                  help='python with torch + transformers: also time the PyTorch peer')
  ap.add_argument('--out', default='bench/results/train_throughput.json')
  args = ap.parse_args()
  configs = [config_with(loss, args.set) for loss in ('ce', 'one_minus')]
  # Before the first JAX call, so that the backend's threads allocate under these settings.
  reuse = configs[0].train.reuse_host_memory and host_memory.reuse_freed_memory()
  options = xla_flags.for_mesh(configs[0], sharding.make_mesh(configs[0].mesh, jax.devices()[:1]))
  peak = peak_flops(options)
  print(f'measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s; selffb step compiler '
        f'options: {options or "none"}; host memory reuse: {bool(reuse)}')
  results = [time_selffb(c, args.steps, args.warmup, peak, args.phases) for c in configs]
  yard = common.yardstick('bench_jax_train.py', '--steps', args.steps, '--warmup', args.warmup,
                          '--peak-gflops', peak / 1e9)
  base = yard and yard['jax_ref_train']
  peers = [base] if base else []
  # The process settings selffb runs under, for the peers: its XLA options as XLA_FLAGS (JAX
  # only) and its malloc settings (all of them, so that no peer runs with less than selffb).
  malloc_env = host_memory.ENV if reuse else {}
  jax_env = dict(malloc_env, **({'XLA_FLAGS': xla_flags.as_xla_flags(options)} if options else {}))
  if base and jax_env:
    tuned = common.yardstick('bench_jax_train.py', '--steps', args.steps, '--warmup',
                             args.warmup, '--peak-gflops', peak / 1e9,
                             env=jax_env)['jax_ref_train']
    peers.append(dict(tuned, name='jax_ref_train+selffb_settings'))
  nanogpt = os.path.join(os.environ.get('PEER_DIR', os.path.expanduser('~/.cache/selffb-peers')),
                         'nanogpt_model.py')
  for impl in ('hf', 'nanogpt') if args.torch_python else ():
    if impl == 'nanogpt' and not os.path.exists(nanogpt):
      print(f'no nanoGPT model file at {nanogpt} (set PEER_DIR): skipping that peer')
      continue
    torch = common.yardstick('bench_torch_train.py', '--impl', impl, '--steps', args.steps,
                             '--warmup', args.warmup, '--peak-gflops', peak / 1e9,
                             python=args.torch_python, env=malloc_env)
    peers += list(torch.values()) if torch else []
  common.table(results + peers, base)
  for r in results + peers:
    print(f'{r["name"]}: MFU {r["mfu_pct"]:.1f}%')
  common.write_report(args.out, peak_gflops=peak / 1e9, overrides=args.set,
                      selffb_compiler_options=options, peer_env=jax_env, selffb=results,
                      yardstick=base, peers=peers, ratios={
                          r['name']: {p['name']: r['tokens_per_s'] / p['tokens_per_s']
                                      for p in peers} for r in results})


if __name__ == '__main__':
  main()
