"""Batched sampling with a model's explicit cache: one prefill pass, then a while loop.

The sampler knows no model kind: it calls the model module's `init_cache`, `prefill` and
`decode_step` (selffb/models), whatever pytree the cache is.

Greedy (temperature 0), temperature, top-k and top-p, combinable; every row stops at its own end
token. Token i of a row is drawn with `jax.random.fold_in(rng, i)`, so a seed reproduces a run.
The returned log-probabilities are the model's own (temperature 1, before any filtering) for the
tokens chosen: the confidence a scorer wants, whatever the decoding settings.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils

from selffb import sharding
from selffb.data import pipeline

_MIN_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 0.0  # 0 is greedy.
  top_k: int = 0  # 0 keeps every token.
  top_p: float = 1.0  # 1 keeps every token.
  max_new_tokens: int = 32

  def __post_init__(self):
    if not self.temperature >= 0:  # NaN too.
      raise ValueError(f'temperature={self.temperature} must be >= 0.')
    if self.top_k < 0:
      raise ValueError(f'top_k={self.top_k} must be >= 0 (0 disables).')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p={self.top_p} must be in (0, 1].')
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens={self.max_new_tokens} must be >= 1.')

  @classmethod
  def from_config(cls, c, key='config.sample'):
    """From a config section; errors name `key` (the section the values came from)."""
    try:
      return cls(temperature=float(c.temperature), top_k=int(c.top_k), top_p=float(c.top_p),
                 max_new_tokens=int(c.max_new_tokens))
    except ValueError as e:
      raise ValueError(f'{key}.{e}') from None


def mask_top_k(logits_BxV, k):
  """Keeps the k largest logits of each row (and any tied with the k-th); -inf elsewhere."""
  kth_B = jax.lax.top_k(logits_BxV, k)[0][:, -1]
  return jnp.where(logits_BxV >= kth_B[:, None], logits_BxV, -jnp.inf)


def mask_top_p(logits_BxV, p):
  """Keeps the smallest set of most likely tokens whose probability reaches p."""
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  kept_BxV = mass_before_BxV < p  # The top token always has 0 mass before it.
  threshold_B = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1)
  return jnp.where(logits_BxV >= threshold_B[:, None], logits_BxV, -jnp.inf)


def choose(logits_BxV, rng, sp):
  """The next token of each row under the sampling settings."""
  if sp.temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / sp.temperature
  if sp.top_k:
    logits_BxV = mask_top_k(logits_BxV, min(sp.top_k, logits_BxV.shape[-1]))
  if sp.top_p < 1:
    logits_BxV = mask_top_p(logits_BxV, sp.top_p)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


@struct.dataclass
class DecodeState:
  i: jax.Array  # New tokens written so far.
  logits_BxV: jax.Array  # The model's prediction for token i.
  pos_B: jax.Array  # Position of token i.
  cache: dict
  done_B: jax.Array  # Row has produced its end token.
  tokens_BxN: jax.Array
  logprobs_BxN: jax.Array


def decode(step_fn, logits_BxV, cache, pos_B, rng, *, sp, eos_id, pad_id):
  """Samples up to `sp.max_new_tokens` tokens per row, in a `lax.while_loop`.

  `logits_BxV` predicts the first new token (the prefill's last position) and `pos_B` is that
  token's position. `step_fn(token_B, pos_B, cache) -> (logits_BxV, cache)` advances the model by
  one token. Returns (tokens_BxN, logprobs_BxN): after a row's end token, pad_id and 0.
  """
  batch, n = logits_BxV.shape[0], sp.max_new_tokens

  def cond(s):
    return (s.i < n) & ~jnp.all(s.done_B)

  def body(s):
    token_B = jnp.where(s.done_B, pad_id, choose(s.logits_BxV, jax.random.fold_in(rng, s.i), sp))
    logprob_B = jnp.take_along_axis(jax.nn.log_softmax(s.logits_BxV), token_B[:, None], -1)[:, 0]
    logprob_B = jnp.where(s.done_B, 0.0, logprob_B)
    done_B = s.done_B | (token_B == eos_id)
    logits_BxV, cache = step_fn(token_B, s.pos_B, s.cache)
    return DecodeState(i=s.i + 1, logits_BxV=logits_BxV, pos_B=s.pos_B + 1, cache=cache,
                       done_B=done_B, tokens_BxN=s.tokens_BxN.at[:, s.i].set(token_B),
                       logprobs_BxN=s.logprobs_BxN.at[:, s.i].set(logprob_B))

  init = DecodeState(i=jnp.zeros((), jnp.int32), logits_BxV=logits_BxV, pos_B=pos_B, cache=cache,
                     done_B=jnp.zeros(batch, bool),
                     tokens_BxN=jnp.full((batch, n), pad_id, jnp.int32),
                     logprobs_BxN=jnp.zeros((batch, n), jnp.float32))
  final = jax.lax.while_loop(cond, body, init)
  return final.tokens_BxN, final.logprobs_BxN


@functools.partial(jax.jit, static_argnames=('model', 'cfg', 'sp', 'eos_id', 'pad_id'))
def _generate(params, tokens_BxP, pos_BxP, rng, *, model, cfg, sp, eos_id, pad_id):
  module = model.build(cfg)
  batch, prompt_len = tokens_BxP.shape
  # The loop's last step writes one slot past the last token it returns.
  cache = model.init_cache(cfg, batch, prompt_len + sp.max_new_tokens)
  logits_BxV, cache = model.prefill(module, params, tokens_BxP, pos_BxP, cache)
  step_fn = functools.partial(model.decode_step, module, params)
  return decode(step_fn, logits_BxV, cache, pos_BxP[:, -1] + 1, rng, sp=sp, eos_id=eos_id,
                pad_id=pad_id)


def bucket(length):
  """Prompt lengths are padded up to a power of two, so few lengths ever compile."""
  return max(_MIN_BUCKET, 1 << (int(length) - 1).bit_length())


def left_pad(prompts, pad_id, length=None, positions=None):
  """Token lists -> (tokens_BxP, pos_BxP): left-padded, pad positions -1, real ones 0..n-1 or
  `positions` (one id list per prompt)."""
  length = length or max(len(p) for p in prompts)
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  pos = np.full((len(prompts), length), -1, np.int32)
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f'prompt {i} is empty; every prompt needs at least one token (bos).')
    if len(p) > length:
      raise ValueError(f'prompt {i} has {len(p)} tokens, more than the {length} allowed.')
    tokens[i, length - len(p):] = p
    pos[i, length - len(p):] = np.arange(len(p)) if positions is None else positions[i]
  return tokens, pos


def generate(params, prompts, *, model, cfg, sp, eos_id, pad_id, seed=0, mesh=None,
             prompt_len=None, positions=None):
  """Continues each prompt (a sequence of token ids, bos included) with `model` (a module of
  selffb/models) under its frozen config `cfg`.

  `positions`: each prompt's position ids (default 0..n-1); new tokens continue from the last.
  Prompts are left-padded to a power-of-two bucket (or `prompt_len`, if given) and the batch to a
  multiple of the mesh's batch shards. Returns a list of (tokens, logprobs) numpy arrays per
  prompt, each ending at (and including) the end token when one was produced.
  """
  longest = max(len(p) for p in prompts)
  model.check_decode(cfg, longest, sp.max_new_tokens)
  shards = 1 if mesh is None else mesh.shape['data'] * mesh.shape['fsdp']
  rows = -(-len(prompts) // shards) * shards
  if positions is not None:
    positions = pipeline.pad_rows(positions, rows)
  tokens, pos = left_pad(pipeline.pad_rows(prompts, rows), pad_id, prompt_len or bucket(longest),
                         positions)
  if mesh is not None:
    placed = sharding.put_global(mesh, {'tokens': tokens, 'pos': pos})
    tokens, pos = placed['tokens'], placed['pos']
  out = _generate(params, tokens, pos, jax.random.key(seed), model=model, cfg=cfg, sp=sp,
                  eos_id=eos_id, pad_id=pad_id)
  if jax.process_count() > 1:  # Rows live on every host's devices: gather them everywhere.
    out = multihost_utils.process_allgather(out, tiled=True)
  out, logprobs = jax.device_get(out)
  results = []
  for row, lp in zip(out[:len(prompts)], logprobs[:len(prompts)]):
    ends = np.flatnonzero(row == eos_id)
    n = ends[0] + 1 if len(ends) else len(row)
    results.append((row[:n], lp[:n]))
  return results


def generate_batches(params, prompts, positions, *, batch_size, prompt_len=None,
                     seed_of=lambda start: 0, **kw):
  """`generate` over batches of exactly `batch_size` rows (the last filled with copies of its
  first) and one prompt bucket (`prompt_len`, default these prompts'), so the sampler compiles
  once; the batch starting at prompt `start` draws with seed `seed_of(start)`. `kw` are
  `generate`'s. Returns one (tokens, logprobs) per prompt, in order."""
  prompt_len = prompt_len or bucket(max(len(p) for p in prompts))
  outs = []
  for start in range(0, len(prompts), batch_size):
    rows = slice(start, start + batch_size)
    got = generate(params, pipeline.pad_rows(prompts[rows], batch_size), seed=seed_of(start),
                   prompt_len=prompt_len,
                   positions=pipeline.pad_rows(positions[rows], batch_size), **kw)
    outs.extend(got[:len(prompts) - start])
  return outs
