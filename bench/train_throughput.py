"""Train-step throughput and MFU of selffb, beside the plain-JAX yardstick.

    python bench/train_throughput.py [--steps 10] [--rounds 1] [--set model.dtype=bfloat16 ...]
        [--phases] [--torch-python /path/to/venv/bin/python]
        [--out bench/results/train_throughput.json]

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
options (selffb/cpu/xla_flags.py). selffb keeps freed host memory (selffb/cpu/host_memory.py,
`train.reuse_host_memory`). The yardstick runs as plain JAX (XLA's defaults) and once more
under selffb's process settings: its options as XLA_FLAGS and its malloc settings; the PyTorch
peers run under the malloc settings too. `--phases` also times selffb's loss alone and the loss
with its gradients, compiled as the step is, and splits the step into forward, backward and the
rest (the optimizer update and the metrics) by difference, so with few `--steps` the rest can
come out below zero: noise. `--rounds R` compiles selffb once and then times it, the peak and
every peer R times in turn, so that a machine whose speed drifts moves them all alike; it
prints each round's ratio of selffb's `ce` step to every peer and reports medians (the JSON
keeps every round).
"""
import argparse
import ast
import functools
import itertools
import os
import statistics
import time

import common  # pylint: disable=g-bad-import-order
import jax
import jax.numpy as jnp
import numpy as np

from selffb import models
from selffb import optim
from selffb import sharding
from selffb import tasks
from selffb.assemble import setup as setup_lib
from selffb.cpu import host_memory
from selffb.cpu import xla_flags
from selffb.data import tokenizers
from selffb.feedback import losses
from selffb.train import state as state_lib
from selffb.train import step as step_lib


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


def phase_functions(s):
  """`f(params, batch)` for the training loss alone and for the loss with its gradients, jitted
  with the step's compiler options and the batch as an argument, as in `step.train_step`."""
  apply_fn = step_lib.apply_fn(s, training=True)
  loss_fn = functools.partial(s.task.loss_fn, fb=s.fb)
  of_params = lambda p, bt: loss_fn(apply_fn(p, bt, {'dropout': jax.random.key(1)}), bt,
                                    jnp.sum(bt['loss_mask']), jnp.zeros([], jnp.int32))[0]
  opts = xla_flags.for_mesh(s.config, s.mesh)
  return [jax.jit(f, compiler_options=opts) for f in (of_params, jax.grad(of_params))]


def selffb_timer(c, phases=False):
  """Compiles selffb's train step for `c` and returns `measure(steps, warmup, peak)`, which times
  it (and with `phases` its forward and backward) and returns the result record."""
  b, t, v = c.data.batch_size, c.data.seq_len, common.VOCAB
  task = tasks.get(c.data.task)
  s = setup_lib.Setup(config=c, model=models.get(c.model.kind),
                      model_cfg=common.reference_model_config(c),
                      task=task, tokenizer=tokenizers.get(c.data),
                      fmt=task.batch_format(c), splits={}, seq_len=t,
                      mesh=sharding.make_mesh(c.mesh, jax.devices()[:1]),
                      tx=optim.make_optimizer(c.optim, c.train.num_steps),
                      fb=losses.FeedbackSpec.from_config(c.feedback, c.train.num_steps))
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, _ = step_lib.compile_steps(s, state_sh)
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
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  flops = model_flops(c, n_params)
  phase_fns = []
  if phases and c.train.grad_accum_steps > 1:
    print('--phases skipped: they time the whole batch at once, and this step accumulates '
          f'{c.train.grad_accum_steps} microbatches')
  elif phases:
    phase_fns = phase_functions(s)

  def step():
    nonlocal state
    state, m = p_train(state, batches[next(i) % 4], jax.random.key(1))
    return jax.block_until_ready(m)

  def measure(steps, warmup, peak):
    med, m = common.timed(step, steps, warmup)
    result = {'name': f'selffb_train_{c.feedback.loss}', 'median_s': med,
              'tokens_per_s': b * t / med, 'compile_s': compile_s, 'n_params': n_params,
              'model_gflop_per_step': flops / 1e9, 'mfu_pct': 100 * flops / med / peak,
              'loss_last': float(m['loss'])}
    if phase_fns:  # The state's params as they are now: the step donates the ones before.
      fwd, fwd_bwd = (common.timed(lambda f=f: jax.block_until_ready(f(state.params, batches[0])),
                                   steps, warmup)[0] for f in phase_fns)
      result['phases_s'] = {'forward': fwd, 'backward': fwd_bwd - fwd, 'rest': med - fwd_bwd}
      print(f'{result["name"]} phases: ' + ', '.join(
          f'{k} {v:.3f} s ({100 * v / med:.0f}%)' for k, v in result['phases_s'].items()))
    return result
  return measure


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--warmup', type=int, default=3)
  ap.add_argument('--rounds', type=int, default=1,
                  help='time selffb and every peer this many times, alternating; report medians')
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
  print(f'selffb step compiler options: {options or "none"}; host memory reuse: {bool(reuse)}')
  measures = [selffb_timer(c, args.phases) for c in configs]
  # The process settings selffb runs under, for the peers: its XLA options as XLA_FLAGS (JAX
  # only) and its malloc settings (all of them, so that no peer runs with less than selffb).
  malloc_env = host_memory.ENV if reuse else {}
  jax_env = dict(malloc_env, **({'XLA_FLAGS': xla_flags.as_xla_flags(options)} if options else {}))
  rounds = []
  for r in range(args.rounds):  # Each round times everything again: drift moves all runs alike.
    peak = peak_flops(options)
    print(f'round {r + 1}/{args.rounds}: measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s',
          flush=True)
    results = [measure(args.steps, args.warmup, peak) for measure in measures]
    base, peers = time_peers(args, peak, jax_env, malloc_env)
    rounds.append({'peak_gflops': peak / 1e9, 'selffb': results, 'yardstick': base,
                   'peers': peers, 'ratios': {
                       x['name']: {p['name']: x['tokens_per_s'] / p['tokens_per_s']
                                   for p in peers} for x in results}})
  results = [median_record([rd['selffb'][i] for rd in rounds]) for i in range(len(configs))]
  peers = [median_record([rd['peers'][i] for rd in rounds]) for i in range(len(rounds[0]['peers']))]
  base = peers[0] if rounds[0]['yardstick'] else None
  ratios = {x['name']: {p['name']: statistics.median(rd['ratios'][x['name']][p['name']]
                                                     for rd in rounds) for p in peers}
            for x in results}
  if args.rounds > 1:
    print(f'medians over {args.rounds} rounds; selffb_train_ce against each peer, round by round:')
    for p in peers:
      print(f'  {p["name"]:<30}' + ' '.join(
          f'{rd["ratios"]["selffb_train_ce"][p["name"]]:.2f}x' for rd in rounds)
            + f'   median {ratios["selffb_train_ce"][p["name"]]:.2f}x')
  common.table(results + peers, base)
  for x in results + peers:
    print(f'{x["name"]}: MFU {x["mfu_pct"]:.1f}%')
  common.write_report(args.out, peak_gflops=statistics.median(rd['peak_gflops'] for rd in rounds),
                      overrides=args.set, selffb_compiler_options=options, peer_env=jax_env,
                      selffb=results, yardstick=base, peers=peers, ratios=ratios, rounds=rounds)


def time_peers(args, peak, jax_env, malloc_env):
  """(the yardstick's record or None, every peer's record, the yardstick's first)."""
  yard = common.yardstick('bench_jax_train.py', '--steps', args.steps, '--warmup', args.warmup,
                          '--peak-gflops', peak / 1e9)
  base = yard and yard['jax_ref_train']
  peers = [base] if base else []
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
  return base, peers


def median_record(records):
  """One run's records over the rounds as one: the medians of its timings, the rest the first's."""
  out = dict(records[0])
  for key in ('median_s', 'tokens_per_s', 'mfu_pct'):
    out[key] = statistics.median(x[key] for x in records)
  return out

if __name__ == '__main__':
  main()
