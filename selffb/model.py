"""A decoder-only Transformer in Flax Linen with an explicit KV cache.

Shapes in names: B batch, T query length, S cache/key length, H heads, D head dim, E d_model,
M mlp dim, V vocab, L layers.

Every token carries an integer position id (for RoPE or learned positions); id -1 marks padding,
never attended to. Causality follows the sequence (the cache slot), not the ids, so ids may
restart, e.g. per operand: a query in slot i sees the non-padding keys in slots <= i.
"""
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_NEG_INF = -1e30  # Finite, so a fully masked row (a padding query) stays NaN-free.
REMAT_POLICIES = {  # What the backward pass may keep instead of recomputing.
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model's static hyperparameters; built from `config.model` at the model edge."""
  vocab_size: int
  num_layers: int
  num_heads: int
  d_model: int
  mlp_dim: int
  mlp: str = 'gelu'
  norm: str = 'layernorm'
  positions: str = 'rope'
  rope_base: float = 10_000.0
  max_len: int = 64
  tie_embeddings: bool = True
  use_bias: bool = False
  dropout: float = 0.0
  param_dtype: Any = jnp.float32
  dtype: Any = jnp.float32
  remat: str = 'none'
  attention: str = 'einsum'
  attention_block: int = 128
  scan_layers: bool = False
  deterministic: bool = True  # Training mode is `.replace(deterministic=False)`.

  @classmethod
  def from_config(cls, c):
    """Validates `config.model` and freezes it."""
    for key, allowed in (('mlp', ('gelu', 'swiglu')), ('norm', ('layernorm', 'rmsnorm')),
                         ('positions', ('rope', 'learned', 'none')),
                         ('param_dtype', tuple(_DTYPES)), ('dtype', tuple(_DTYPES)),
                         ('remat', tuple(REMAT_POLICIES)), ('attention', ('einsum', 'dot_product'))):
      if c[key] not in allowed:
        raise ValueError(f'config.model.{key}={c[key]!r}; choose one of {allowed}.')
    if c.d_model % c.num_heads:
      raise ValueError(f'config.model.d_model={c.d_model} is not divisible by '
                       f'num_heads={c.num_heads}.')
    if c.attention_block < 0:
      raise ValueError(f'config.model.attention_block={c.attention_block}; use 0 (one block) or '
                       'a positive query block length.')
    if c.positions == 'rope' and (c.d_model // c.num_heads) % 2:
      raise ValueError('RoPE needs an even head dimension (d_model / num_heads).')
    fields = {f.name for f in dataclasses.fields(cls)} - {'deterministic'}
    kw = {k: c[k] for k in fields}
    kw['param_dtype'], kw['dtype'] = _DTYPES[c.param_dtype], _DTYPES[c.dtype]
    return cls(**kw)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  @property
  def head_dim(self):
    return self.d_model // self.num_heads


def init_cache(cfg: ModelConfig, batch: int, length: int):
  """An empty KV cache: per-layer keys/values (stacked along a leading layer axis when the layers
  are scanned), the position id of every slot, and the write index."""
  shape = (batch, cfg.num_heads, length, cfg.head_dim)
  if cfg.scan_layers:
    layers = {'k': jnp.zeros((cfg.num_layers,) + shape, cfg.dtype),
              'v': jnp.zeros((cfg.num_layers,) + shape, cfg.dtype)}
  else:
    layers = [{'k': jnp.zeros(shape, cfg.dtype), 'v': jnp.zeros(shape, cfg.dtype)}
              for _ in range(cfg.num_layers)]
  return {'layers': layers, 'pos': jnp.full((batch, length), -1, jnp.int32),
          'index': jnp.zeros((), jnp.int32)}


def rope(x_BxTxHxD, pos_BxT, base):
  """Rotary position embedding (rotate-half form)."""
  half = x_BxTxHxD.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxTx1xK = (pos_BxT[..., None].astype(jnp.float32) * freq)[:, :, None, :]
  sin, cos = jnp.sin(angle_BxTx1xK), jnp.cos(angle_BxTx1xK)
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxD.dtype)


def _on_rows(fn, x, n_in=1):
  """fn applied to x with its leading (batch, time) dimensions merged into one, a free reshape.

  A projection's weight gradient then contracts a single dimension, which XLA:CPU's dots read
  in place; contracting two, XLA first copies one activation into a transposed layout."""
  lead = x.shape[:x.ndim - n_in]
  y = fn(x.reshape((-1,) + x.shape[x.ndim - n_in:]))
  return y.reshape(lead + y.shape[1:])


def _dense(cfg, features, axes, name, in_axis=-1, bias=None):
  """A projection, fan-in init (std 1/sqrt(fan_in)); a zero-init bias if cfg.use_bias; on rows."""
  init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
  n_in = 1 if isinstance(in_axis, int) else len(in_axis)
  use_bias = cfg.use_bias if bias is None else bias
  dense = nn.DenseGeneral(features, axis=in_axis, use_bias=use_bias, dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype, kernel_init=init, name=name,
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 axes[n_in:]))
  return lambda x: _on_rows(dense, x, n_in)


def _norm(cfg, name):
  scale = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, scale_init=scale, name=name)
  bias = nn.with_logical_partitioning(nn.initializers.zeros, ('embed',))
  return nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, scale_init=scale,
                      bias_init=bias, name=name)


def _mask(valid_BxS, q_slot_T):
  """[B, 1, T, S]: the query in slot q_slot_T[t] sees the valid keys in slots up to its own."""
  causal_TxS = jnp.arange(valid_BxS.shape[1])[None, :] <= q_slot_T[:, None]
  return (causal_TxS[None] & valid_BxS[:, None, :])[:, None]


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


def _query_blocks(valid_BxT, block):
  """(start, end, mask_Bx1xTxS) of each query block (block 0: one block); a block's queries see
  keys 0..end-1."""
  t = valid_BxT.shape[1]
  bounds = [(i, min(i + (block or t), t)) for i in range(0, t, block or t)]
  return [(start, end, _mask(valid_BxT[:, :end], jnp.arange(start, end))) for start, end in bounds]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, block):
  """Softmax attention of a sequence over itself (no cache): the query in slot t sees the keys in
  slots <= t whose `valid_BxT` is True. Queries go in blocks of `block` (0: one block) that
  skip the keys after them, so the score blocks above the diagonal are never computed.

  The backward pass is written by hand from the saved weights, dS = P * (dP - rowsum(dO * O)),
  with no pass back through the normalisation, the mask and the max, which makes the train step
  faster on CPU (README, Speed). It gives autodiff's gradients, padding queries included.
  Forward-mode autodiff (jax.jvp, jacfwd) does not apply to it (`attention='dot_product'` allows
  it); gradients of gradients do."""
  return _causal_attention_fwd(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, block)[0]


def _causal_attention_fwd(q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, block):
  """The output, and what the backward pass needs: the inputs, the output and each block's
  unnormalised weights and row sums."""
  outs, saved = [], []
  for start, end, mask_Bx1xTxS in _query_blocks(valid_BxT, block):
    out_BxHxTxD, weights_BxHxTxS, sums_BxHxTx1 = _attend(
        q_BxHxTxD[:, :, start:end], k_BxHxTxD[:, :, :end], v_BxHxTxD[:, :, :end], mask_Bx1xTxS)
    outs.append(out_BxHxTxD)
    saved.append((weights_BxHxTxS, sums_BxHxTx1))
  out_BxHxTxD = jnp.concatenate(outs, axis=2)
  return out_BxHxTxD, (q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, out_BxHxTxD, saved)


def _causal_attention_bwd(block, residuals, dout_BxHxTxD):
  """dQ, dK, dV (and no cotangent for the boolean mask) block by block: with P = W / sums,
  dP = dO V^T, dS = P * (dP - rowsum(dO * O)) / sqrt(D) on the visible keys (0 elsewhere),
  dQ = dS K, dK = dS^T Q and dV = P^T dO."""
  q_BxHxTxD, k_BxHxTxD, v_BxHxTxD, valid_BxT, out_BxHxTxD, saved = residuals
  scale = q_BxHxTxD.shape[-1] ** -0.5
  einsum_f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
  rowdot_BxHxTx1 = jnp.sum(dout_BxHxTxD.astype(jnp.float32) * out_BxHxTxD.astype(jnp.float32),
                           axis=-1, keepdims=True)
  dqs = []
  dk_BxHxTxD = jnp.zeros(k_BxHxTxD.shape, jnp.float32)
  dv_BxHxTxD = jnp.zeros(v_BxHxTxD.shape, jnp.float32)
  for (start, end, mask_Bx1xTxS), (weights_BxHxTxS, sums_BxHxTx1) in zip(
      _query_blocks(valid_BxT, block), saved):
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
          dv_BxHxTxD.astype(v_BxHxTxD.dtype), None)


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, kv_pos_BxS, layer_cache, index):
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.head_dim)
    q_BxTxHxD = _dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'query')(x_BxTxE)
    k_BxTxHxD = _dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'key')(x_BxTxE)
    v_BxTxHxD = _dense(cfg, heads, ('embed', 'heads', 'head_dim'), 'value')(x_BxTxE)
    if cfg.positions == 'rope':
      q_BxTxHxD = rope(q_BxTxHxD, pos_BxT, cfg.rope_base)
      k_BxTxHxD = rope(k_BxTxHxD, pos_BxT, cfg.rope_base)
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
                                     cfg.attention_block)
      out_BxTxHxD = jnp.swapaxes(out_BxHxTxD, 1, 2)
    else:
      q_slot_T = jnp.arange(q_BxHxTxD.shape[2]) + (0 if index is None else index)
      mask_Bx1xTxS = _mask(kv_pos_BxS >= 0, q_slot_T)
      if cfg.attention == 'dot_product':  # jax.nn's: cuDNN flash attention where available.
        out_BxTxHxD = jax.nn.dot_product_attention(
            q_BxTxHxD, jnp.swapaxes(k_BxHxSxD, 1, 2), jnp.swapaxes(v_BxHxSxD, 1, 2),
            mask=mask_Bx1xTxS)
      else:
        out_BxTxHxD = jnp.swapaxes(
            _attend(q_BxHxTxD, k_BxHxSxD, v_BxHxSxD, mask_Bx1xTxS)[0], 1, 2)
    out_BxTxE = _dense(cfg, cfg.d_model, ('heads', 'head_dim', 'embed'), 'out',
                       in_axis=(-2, -1))(out_BxTxHxD)
    return out_BxTxE, layer_cache


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE):
    cfg = self.cfg
    if cfg.mlp == 'swiglu':
      gate_BxTxM = _dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'gate')(x_BxTxE)
      up_BxTxM = _dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'up')(x_BxTxE)
      h_BxTxM = nn.silu(gate_BxTxM) * up_BxTxM
    else:
      h_BxTxM = nn.gelu(_dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'up')(x_BxTxE))
    return _dense(cfg, cfg.d_model, ('mlp', 'embed'), 'down')(h_BxTxM)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, kv_pos_BxS, layer_cache, index):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    h_BxTxE, layer_cache = Attention(cfg, name='attn')(
        _norm(cfg, 'attn_norm')(x_BxTxE), pos_BxT, kv_pos_BxS, layer_cache, index)
    x_BxTxE = x_BxTxE + drop(h_BxTxE)
    x_BxTxE = x_BxTxE + drop(Mlp(cfg, name='mlp')(_norm(cfg, 'mlp_norm')(x_BxTxE)))
    return x_BxTxE, layer_cache


class Transformer(nn.Module):
  """`(tokens_BxT, pos_BxT, cache=None) -> (logits_BxTxV float32, cache)`."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT, pos_BxT=None, cache=None):
    cfg = self.cfg
    if pos_BxT is None:
      pos_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.d_model ** -0.5), ('vocab', 'embed')), name='embed')
    x_BxTxE = embed(tokens_BxT)
    if cfg.positions == 'learned':
      pos_embed = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, name='pos_embed',
                           embedding_init=nn.with_logical_partitioning(
                               nn.initializers.normal(cfg.d_model ** -0.5), (None, 'embed')))
      x_BxTxE = x_BxTxE + pos_embed(jnp.clip(pos_BxT, 0, cfg.max_len - 1))
    x_BxTxE = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)(x_BxTxE)

    if cache is None:
      kv_pos_BxS, index, layer_caches = pos_BxT, None, None
    else:
      index = cache['index']
      kv_pos_BxS = jax.lax.dynamic_update_slice(cache['pos'], pos_BxT, (0, index))
      layer_caches = cache['layers']
    block = Block if cfg.remat == 'none' else nn.remat(Block, policy=REMAT_POLICIES[cfg.remat])
    if cfg.scan_layers:  # One compiled block, its parameters stacked on a 'layers' axis.
      blocks = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                      'dropout': True},
                       in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                       length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxTxE, new_layers = blocks(cfg, name='blocks')(x_BxTxE, pos_BxT, kv_pos_BxS,
                                                      layer_caches, index)
    else:
      new_layers = []
      for i in range(cfg.num_layers):
        x_BxTxE, layer_cache = block(cfg, name=f'block_{i}')(
            x_BxTxE, pos_BxT, kv_pos_BxS, None if cache is None else layer_caches[i], index)
        new_layers.append(layer_cache)
    x_BxTxE = _norm(cfg, 'final_norm')(x_BxTxE)
    if cfg.tie_embeddings:
      logits_BxTxV = _on_rows(embed.attend, x_BxTxE)
    else:
      logits_BxTxV = _dense(cfg, cfg.vocab_size, ('embed', 'vocab'), 'unembed',
                            bias=False)(x_BxTxE)
    if cache is not None:
      cache = {'layers': new_layers, 'pos': kv_pos_BxS, 'index': index + tokens_BxT.shape[1]}
    return logits_BxTxV.astype(jnp.float32), cache
