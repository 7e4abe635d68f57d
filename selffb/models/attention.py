"""Attention: causal self-attention over a sequence (blocked, with a hand-written backward pass)
and over an explicit KV cache for decoding; and attention with no causal order (an encoder's
self-attention, a decoder's cross-attention).

Every token carries an integer position id; id -1 marks padding, never attended to. Causality
follows the sequence (the cache slot), not the ids, so ids may restart, e.g. per operand: a
query in slot i sees the non-padding keys in slots <= i. Packed rows (several documents in one
row) also carry segment ids: a query then sees only keys of its own segment.

`attention='dot_product'` runs `jax.nn.dot_product_attention` with the implementation
`choose_implementation` picks: cuDNN flash attention on an NVIDIA GPU in float16/bfloat16, with
cuDNN's own causal flag and key lengths instead of a dense mask, where the mask is causal or
bidirectional over right-padded rows; XLA with the dense mask otherwise (one log line says why).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from selffb.models import layers

_NEG_INF = -1e30  # Finite, so a fully masked row (a padding query) stays NaN-free.
CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)
CUDNN_MAX_HEAD_DIM = 128  # 256 from Hopper on; 128 holds on every GPU cuDNN's flash path takes.
MASKS = ('causal', 'bidirectional', 'segments', 'cache')


def choose_implementation(platform, dtype, head_dim, mask):
  """(implementation, why) of `jax.nn.dot_product_attention` for `attention='dot_product'`:
  'cudnn' on platform 'cuda' for float16/bfloat16, a head dim cuDNN takes and a `mask` (one of
  MASKS) it expresses without a dense mask (causal or bidirectional, padding as key lengths);
  'xla' with the dense mask otherwise."""
  if platform != 'cuda':
    return 'xla', f'platform {platform!r} is not an NVIDIA GPU'
  if np.dtype(dtype) not in [np.dtype(d) for d in CUDNN_DTYPES]:
    return 'xla', f'dtype {np.dtype(dtype).name}: cuDNN flash attention takes float16/bfloat16'
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return 'xla', (f'head dim {head_dim}: cuDNN takes multiples of 8 up to '
                   f'{CUDNN_MAX_HEAD_DIM}')
  if mask == 'segments':
    return 'xla', 'segment ids of packed rows: cuDNN masks by lengths, not by segment'
  if mask == 'cache':
    return 'xla', "decoding over a KV cache: cuDNN's causal mask starts at the cache's slot 0"
  return 'cudnn', f'{mask} mask as cuDNN flags and key lengths (rows padded on the right)'


def platform():
  """'cuda' on an NVIDIA GPU, else JAX's backend name ('cpu', 'tpu', 'gpu' for ROCm)."""
  backend = jax.default_backend()
  client = jax.devices()[0].client
  if backend == 'gpu' and 'cuda' in f'{client.platform} {client.platform_version}'.lower():
    return 'cuda'
  return backend


@functools.lru_cache(maxsize=None)
def _log_choice(implementation, why):
  """One log line per distinct choice per process (every layer and trace asks again)."""
  logging.info("attention='dot_product': jax.nn.dot_product_attention(implementation=%r): %s",
               implementation, why)


def dot_product(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, valid_BxS, mask_Bx1xTxS, mask):
  """jax.nn.dot_product_attention with the implementation `choose_implementation` picks for
  this device, dtype and `mask` kind; `mask_Bx1xTxS` is the dense mask the XLA path takes."""
  implementation, why = choose_implementation(platform(), q_BxTxHxD.dtype,
                                              q_BxTxHxD.shape[-1], mask)
  _log_choice(implementation, why)
  if implementation == 'xla':
    return jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask=mask_Bx1xTxS,
                                        implementation='xla')
  return by_lengths(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, valid_BxS, mask_Bx1xTxS,
                    mask == 'causal', implementation)


def by_lengths(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, valid_BxS, mask_Bx1xTxS, causal, implementation):
  """Attention with `is_causal` and key lengths for the rows whose valid keys are a prefix (as
  training batches are padded); any other padding (a left-padded prompt) takes the XLA path
  with the dense mask, picked on the device per batch. With key lengths only, a padding query
  sees what the dense mask shows it: the valid keys (up to its slot, if causal)."""
  s = valid_BxS.shape[1]
  n_B = valid_BxS.sum(axis=1, dtype=jnp.int32)
  prefix = jnp.all(valid_BxS == (jnp.arange(s)[None, :] < n_B[:, None]))
  fast = lambda: jax.nn.dot_product_attention(
      q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, is_causal=causal,
      key_value_seq_lengths=jnp.maximum(n_B, 1),  # An all-padding row reads slot 0, not NaN.
      implementation=implementation)
  dense = lambda: jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD,
                                               mask=mask_Bx1xTxS, implementation='xla')
  return jax.lax.cond(prefix, fast, dense)


def _mask(valid_BxS, q_slot_T, seg_BxS=None):
  """[B, 1, T, S]: the query in slot q_slot_T[t] sees the valid keys in slots up to its own and,
  with segment ids (one per slot), only those of its own segment."""
  causal_TxS = jnp.arange(valid_BxS.shape[1])[None, :] <= q_slot_T[:, None]
  mask_BxTxS = causal_TxS[None] & valid_BxS[:, None, :]
  if seg_BxS is not None:
    seg_BxS = jnp.asarray(seg_BxS)  # (A numpy array cannot be indexed by traced slots.)
    mask_BxTxS &= seg_BxS[:, q_slot_T][:, :, None] == seg_BxS[:, None, :]
  return mask_BxTxS[:, None]


def _attend(q_BxHxTxD, k_BxHxSxD, v_BxHxSxD, mask_Bx1xTxS):
  """Softmax attention, normalised after the value product: dividing the [T, D] output by the
  row sums, not the [T, S] weights, saves a pass over the scores. Returns the output and, for
  the backward pass, the unnormalised float32 weights and their row sums."""
  scores_BxHxTxS = jnp.einsum('bhtd,bhsd->bhts', q_BxHxTxD, k_BxHxSxD,
                              preferred_element_type=jnp.float32) / jnp.sqrt(q_BxHxTxD.shape[-1])
  scores_BxHxTxS = jnp.where(mask_Bx1xTxS, scores_BxHxTxS, _NEG_INF)
  # The max only keeps exp in range; the result does not depend on it.
  top_BxHxTx1 = jax.lax.stop_gradient(scores_BxHxTxS.max(axis=-1, keepdims=True))
  weights_BxHxTxS = jnp.exp(scores_BxHxTxS - top_BxHxTx1)
  sums_BxHxTx1 = weights_BxHxTxS.sum(axis=-1, keepdims=True)
  out_BxHxTxD = jnp.einsum('bhts,bhsd->bhtd', weights_BxHxTxS.astype(v_BxHxSxD.dtype), v_BxHxSxD,
                           preferred_element_type=jnp.float32)
  return (out_BxHxTxD / sums_BxHxTx1).astype(q_BxHxTxD.dtype), weights_BxHxTxS, sums_BxHxTx1


def _query_blocks(valid_BxT, seg_BxT, block):
  """(start, end, mask_Bx1xTxS) of each query block (block 0: one block); a block's queries see
  keys 0..end-1."""
  t = valid_BxT.shape[1]
  bounds = [(i, min(i + (block or t), t)) for i in range(0, t, block or t)]
  return [(start, end, _mask(valid_BxT[:, :end], jnp.arange(start, end),
                             None if seg_BxT is None else seg_BxT[:, :end]))
          for start, end in bounds]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def causal_attention(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, seg_BxT, block):
  """Softmax attention of a sequence over itself (no cache): the query in slot t sees the keys in
  slots <= t whose `valid_BxT` is True and, unless `seg_BxT` is None, whose segment id is its
  own. Queries go in blocks of `block` (0: one block) that
  skip the keys after them, so the score blocks above the diagonal are never computed.

  The backward pass is written by hand from the saved weights, dS = P * (dP - rowsum(dO * O)),
  with no pass back through the normalisation, the mask and the max, which makes the train step
  faster on CPU (bench/README.md). It gives autodiff's gradients, padding queries included.
  Forward-mode autodiff (jax.jvp, jacfwd) does not apply to it (`attention='dot_product'` allows
  it); gradients of gradients do."""
  return _causal_attention_fwd(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, seg_BxT, block)[0]


def _causal_attention_fwd(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, seg_BxT, block):
  """The output, and what the backward pass needs: the inputs, the output and each block's
  unnormalised weights and row sums."""
  outs, saved = [], []
  for start, end, mask_Bx1xTxS in _query_blocks(valid_BxT, seg_BxT, block):
    out_BxHxTxD, weights_BxHxTxS, sums_BxHxTx1 = _attend(
        q_BxHxTxD[:, :, start:end], k_BxHxTxD[:, :, :end], v_BxHxTxD[:, :, :end], mask_Bx1xTxS)
    outs.append(out_BxHxTxD)
    saved.append((weights_BxHxTxS, sums_BxHxTx1))
  out_BxHxTxD = jnp.concatenate(outs, axis=2)
  return out_BxHxTxD, (q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, seg_BxT, out_BxHxTxD, saved)


def _causal_attention_bwd(block, residuals, dout_BxHxTxD):
  """dQ, dK, dV (and no cotangent for the boolean mask) block by block: with P = W / sums,
  dP = dO V^T, dS = P * (dP - rowsum(dO * O)) / sqrt(D) on the visible keys (0 elsewhere),
  dQ = dS K, dK = dS^T Q and dV = P^T dO."""
  q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, seg_BxT, out_BxHxTxD, saved = residuals
  scale = q_BxHxTxD.shape[-1] ** -0.5
  einsum_f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
  rowdot_BxHxTx1 = jnp.sum(dout_BxHxTxD.astype(jnp.float32) * out_BxHxTxD.astype(jnp.float32),
                           axis=-1, keepdims=True)
  dqs = []
  dk_BxHxTxD = jnp.zeros(k_BxHxTxD.shape, jnp.float32)
  dv_BxHxTxD = jnp.zeros(v_BxHxTxD.shape, jnp.float32)
  for (start, end, mask_Bx1xTxS), (weights_BxHxTxS, sums_BxHxTx1) in zip(
      _query_blocks(valid_BxT, seg_BxT, block), saved):
    dblock_BxHxTxD = dout_BxHxTxD[:, :, start:end]
    dprobs_BxHxTxS = einsum_f32('bhtd,bhsd->bhts', dblock_BxHxTxD, v_BxHxTxD[:, :, :end])
    dscores_BxHxTxS = jnp.where(
        mask_Bx1xTxS,
        weights_BxHxTxS * ((dprobs_BxHxTxS - rowdot_BxHxTx1[:, :, start:end])
                           * (scale / sums_BxHxTx1)), 0.0).astype(q_BxHxTxD.dtype)
    dqs.append(einsum_f32('bhts,bhsd->bhtd', dscores_BxHxTxS, k_BxHxTxD[:, :, :end]))
    dk_BxHxTxD = dk_BxHxTxD.at[:, :, :end].add(
        einsum_f32('bhts,bhtd->bhsd', dscores_BxHxTxS, q_BxHxTxD[:, :, start:end]))
    # P^T dO as W^T (dO / sums): the division on [T, D], not on the [T, S] weights. Summed into
    # dK and dV with .at[].add, which ran faster in the step than padding or concatenating.
    dv_BxHxTxD = dv_BxHxTxD.at[:, :, :end].add(einsum_f32(
        'bhts,bhtd->bhsd', weights_BxHxTxS.astype(v_BxHxTxD.dtype),
        (dblock_BxHxTxD / sums_BxHxTx1).astype(v_BxHxTxD.dtype)))
  dq_BxHxTxD = jnp.concatenate(dqs, axis=2)
  return (dq_BxHxTxD.astype(q_BxHxTxD.dtype), dk_BxHxTxD.astype(k_BxHxTxD.dtype),
          dv_BxHxTxD.astype(v_BxHxTxD.dtype), None, None)


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention; with `layer_cache` it writes its keys and values at
  `index` and attends over the cache. `seg_BxT` (packed rows, no cache) keeps each query in its
  own segment."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, kv_pos_BxS, layer_cache, index, seg_BxT=None):
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.head_dim)
    q_BxTxHxD = layers.dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'query')(x_BxTxE)
    k_BxTxHxD = layers.dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'key')(x_BxTxE)
    v_BxTxHxD = layers.dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'value')(x_BxTxE)
    if cfg.positions == 'rope':
      q_BxTxHxD = layers.rope(q_BxTxHxD, pos_BxT, cfg.rope_base)
      k_BxTxHxD = layers.rope(k_BxTxHxD, pos_BxT, cfg.rope_base)
    # Heads-major from here on, so a decode step reads the cache without transposing it.
    q_BxHxTxD, k_BxHxTxD, v_BxHxTxD = (jnp.swapaxes(x, 1, 2)
                                       for x in (q_BxTxHxD, k_BxTxHxD, v_BxTxHxD))
    if layer_cache is None:
      k_BxHxSxD, v_BxHxSxD = k_BxHxTxD, v_BxHxTxD
    else:
      write = lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype),
                                                            (0, 0, index, 0))
      k_BxHxSxD = write(layer_cache['k'], k_BxHxTxD)
      v_BxHxSxD = write(layer_cache['v'], v_BxHxTxD)
      layer_cache = {'k': k_BxHxSxD, 'v': v_BxHxSxD}
    if cfg.attention == 'einsum' and layer_cache is None:
      out_BxHxTxD = causal_attention(q_BxHxTxD, k_BxHxSxD, v_BxHxSxD, kv_pos_BxS >= 0,
                                     seg_BxT, cfg.attention_block)
      out_BxTxHxD = jnp.swapaxes(out_BxHxTxD, 1, 2)
    else:
      q_slot_T = jnp.arange(q_BxHxTxD.shape[2]) + (0 if index is None else index)
      mask_Bx1xTxS = _mask(kv_pos_BxS >= 0, q_slot_T, seg_BxT)
      if cfg.attention == 'dot_product':
        kind = 'cache' if layer_cache is not None else 'causal' if seg_BxT is None else 'segments'
        out_BxTxHxD = dot_product(q_BxTxHxD, jnp.swapaxes(k_BxHxSxD, 1, 2),
                                  jnp.swapaxes(v_BxHxSxD, 1, 2), kv_pos_BxS >= 0, mask_Bx1xTxS,
                                  kind)
      else:
        out_BxTxHxD = jnp.swapaxes(
            _attend(q_BxHxTxD, k_BxHxSxD, v_BxHxSxD, mask_Bx1xTxS)[0], 1, 2)
    out_BxTxE = layers.dense(cfg, cfg.d_model, ('heads', 'head_dim', 'embed'), 'out',
                             in_axis=(-2, -1))(out_BxTxHxD)
    return out_BxTxE, layer_cache


class Attention(nn.Module):
  """Multi-head attention with no causal order: queries over every valid key of `memory`. The
  encoder's bidirectional self-attention (memory = the queries' own sequence) and the decoder's
  cross-attention to the encoder's output. `kv` (keys, values, valid), as a call returns them,
  skips the key and value projections: a decoder computes them once per source. With RoPE, the
  queries rotate by `pos_BxT` and the keys by `mem_pos_BxS`, so the ids of the two sides line
  up (in the aligned addition layout the token that writes answer digit i has the id of
  operand digit i). `seg_BxS`, the segment ids of a packed row attending to itself, keeps each
  query in its own segment."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, memory_BxSxE=None, mem_pos_BxS=None, kv=None,
               seg_BxS=None):
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.head_dim)
    q_BxTxHxD = layers.dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'query')(x_BxTxE)
    if cfg.positions == 'rope':
      q_BxTxHxD = layers.rope(q_BxTxHxD, pos_BxT, cfg.rope_base)
    if kv is None:
      k_BxSxHxD = layers.dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'key')(memory_BxSxE)
      v_BxSxHxD = layers.dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'value')(memory_BxSxE)
      if cfg.positions == 'rope':
        k_BxSxHxD = layers.rope(k_BxSxHxD, mem_pos_BxS, cfg.rope_base)
      kv = (jnp.swapaxes(k_BxSxHxD, 1, 2), jnp.swapaxes(v_BxSxHxD, 1, 2), mem_pos_BxS >= 0)
    k_BxHxSxD, v_BxHxSxD, valid_BxS = kv
    mask_Bx1xTxS = valid_BxS[:, None, None, :]
    if seg_BxS is not None:  # Self-attention over packed rows: queries and keys share segments.
      mask_Bx1xTxS = mask_Bx1xTxS & (seg_BxS[:, :, None] == seg_BxS[:, None, :])[:, None]
    if cfg.attention == 'dot_product':
      out_BxTxHxD = dot_product(q_BxTxHxD, jnp.swapaxes(k_BxHxSxD, 1, 2),
                                jnp.swapaxes(v_BxHxSxD, 1, 2), valid_BxS, mask_Bx1xTxS,
                                'bidirectional' if seg_BxS is None else 'segments')
    else:
      out_BxTxHxD = jnp.swapaxes(
          _attend(jnp.swapaxes(q_BxTxHxD, 1, 2), k_BxHxSxD, v_BxHxSxD, mask_Bx1xTxS)[0], 1, 2)
    out_BxTxE = layers.dense(cfg, cfg.d_model, ('heads', 'head_dim', 'embed'), 'out',
                             in_axis=(-2, -1))(out_BxTxHxD)
    return out_BxTxE, kv
