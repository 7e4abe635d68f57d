"""A decoder-only Transformer in Flax Linen with an explicit KV cache (model kind 'decoder').

The model interface every kind in selffb/models follows: `Config.from_config(config.model,
vocab_size)`, `build(cfg)` (the Flax module, returning `(outputs, cache)` where `outputs` holds
the final hidden states and each head's logits), `example_inputs(cfg, seq_len)` for init,
`forward(module, params, batch, rngs)` for the train and eval steps, `logical_sizes(cfg)` for
the sharding checks, and for decoding `init_cache`, `prefill` and `decode_step`.

Shapes in names: B batch, T query length, S cache/key length, E d_model, V vocab, L layers.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from selffb import errors
from selffb.models import attention
from selffb.models import layers

OPTIONS = {'mlp': ('gelu', 'gelu_exact', 'swiglu'), 'norm': ('layernorm', 'rmsnorm'),
           'positions': ('rope', 'learned', 'none'), 'param_dtype': tuple(layers.DTYPES),
           'dtype': tuple(layers.DTYPES), 'remat': tuple(layers.REMAT_POLICIES),
           'attention': ('einsum', 'dot_product')}


@dataclasses.dataclass(frozen=True)
class Config:
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
  def from_config(cls, c, vocab_size):
    """Validates `config.model` and freezes it; the vocabulary comes from the tokenizer."""
    for key, allowed in OPTIONS.items():
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
    fields = {f.name for f in dataclasses.fields(cls)} - {'deterministic', 'vocab_size'}
    kw = {k: c[k] for k in fields}
    kw['param_dtype'], kw['dtype'] = layers.DTYPES[c.param_dtype], layers.DTYPES[c.dtype]
    return cls(vocab_size=vocab_size, **kw)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  @property
  def head_dim(self):
    return self.d_model // self.num_heads


def logical_sizes(cfg):
  """The size of each logical parameter axis, for checking config.mesh.rules."""
  return {'embed': cfg.d_model, 'heads': cfg.num_heads, 'mlp': cfg.mlp_dim,
          'head_dim': cfg.head_dim, 'vocab': cfg.vocab_size, 'layers': cfg.num_layers}


def init_cache(cfg: Config, batch: int, length: int):
  """An empty KV cache: per-layer keys/values (stacked along a leading layer axis when the layers
  are scanned), the position id of every slot, and the write index."""
  shape = (batch, cfg.num_heads, length, cfg.head_dim)
  if cfg.scan_layers:
    layer_caches = {'k': jnp.zeros((cfg.num_layers,) + shape, cfg.dtype),
                    'v': jnp.zeros((cfg.num_layers,) + shape, cfg.dtype)}
  else:
    layer_caches = [{'k': jnp.zeros(shape, cfg.dtype), 'v': jnp.zeros(shape, cfg.dtype)}
                    for _ in range(cfg.num_layers)]
  return {'layers': layer_caches, 'pos': jnp.full((batch, length), -1, jnp.int32),
          'index': jnp.zeros((), jnp.int32)}


class Block(nn.Module):
  cfg: Config

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, kv_pos_BxS, layer_cache, index, seg_BxT=None):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    h_BxTxE, layer_cache = attention.CausalSelfAttention(cfg, name='attn')(
        layers.norm(cfg, 'attn_norm')(x_BxTxE), pos_BxT, kv_pos_BxS, layer_cache, index, seg_BxT)
    x_BxTxE = x_BxTxE + drop(h_BxTxE)
    x_BxTxE = x_BxTxE + drop(layers.Mlp(cfg, name='mlp')(layers.norm(cfg, 'mlp_norm')(x_BxTxE)))
    return x_BxTxE, layer_cache


class Decoder(nn.Module):
  """`(tokens_BxT, pos_BxT=None, cache=None, seg_BxT=None) -> ({'hidden': BxTxE, 'logits':
  BxTxV float32}, cache)`. `seg_BxT`, the segment ids of packed rows (no cache), keeps each
  token's attention inside its own document."""
  cfg: Config

  def _blocks(self, x_BxTxE, pos_BxT, kv_pos_BxS, layer_caches, index, seg_BxT):
    cfg = self.cfg
    block = Block if cfg.remat == 'none' else nn.remat(Block,
                                                       policy=layers.REMAT_POLICIES[cfg.remat])
    if cfg.scan_layers:  # One compiled block, its parameters stacked on a 'layers' axis.
      blocks = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                      'dropout': True},
                       in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast),
                       length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      return blocks(cfg, name='blocks')(x_BxTxE, pos_BxT, kv_pos_BxS, layer_caches, index,
                                        seg_BxT)
    new_layers = []
    for i in range(cfg.num_layers):
      x_BxTxE, layer_cache = block(cfg, name=f'block_{i}')(
          x_BxTxE, pos_BxT, kv_pos_BxS, None if layer_caches is None else layer_caches[i], index,
          seg_BxT)
      new_layers.append(layer_cache)
    return x_BxTxE, new_layers

  @nn.compact
  def __call__(self, tokens_BxT, pos_BxT=None, cache=None, seg_BxT=None):
    cfg = self.cfg
    if cache is not None and seg_BxT is not None:
      raise ValueError('segment ids are for packed training rows, not for decoding.')
    if pos_BxT is None:
      pos_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    embed, x_BxTxE = layers.embed_tokens(cfg, tokens_BxT, pos_BxT)
    x_BxTxE = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)(x_BxTxE)
    if cache is None:
      kv_pos_BxS, index, layer_caches = pos_BxT, None, None
    else:
      index = cache['index']
      kv_pos_BxS = jax.lax.dynamic_update_slice(cache['pos'], pos_BxT, (0, index))
      layer_caches = cache['layers']
    x_BxTxE, new_layers = self._blocks(x_BxTxE, pos_BxT, kv_pos_BxS, layer_caches, index,
                                       seg_BxT)
    x_BxTxE = layers.norm(cfg, 'final_norm')(x_BxTxE)
    logits_BxTxV = layers.output_logits(cfg, embed, x_BxTxE)
    if cache is not None:
      cache = {'layers': new_layers, 'pos': kv_pos_BxS, 'index': index + tokens_BxT.shape[1]}
    return {'hidden': x_BxTxE, 'logits': logits_BxTxV}, cache


SEGMENTS = True  # Trains on packed rows (a batch's 'segments').


def build(cfg):
  return Decoder(cfg)


def example_inputs(cfg, seq_len):
  """Positional arguments for `build(cfg).init(rng, *example_inputs(...))`."""
  del cfg
  return (jnp.zeros((1, seq_len), jnp.int32),)


def forward(module, params, batch, rngs=None):
  """The outputs for a batch's 'inputs' (and 'positions' and packed rows' 'segments', if it has
  them), as the steps see it."""
  return module.apply({'params': params}, batch['inputs'], batch.get('positions'), None,
                      batch.get('segments'), rngs=rngs)[0]


def check_decode(cfg, prompt_len, max_new_tokens):
  """Raises InputError when prompts of prompt_len plus the new tokens cannot be decoded (learned
  positions end at max_len); with RoPE or no positions it warns, once, that they run past the
  length the model trained at."""
  if prompt_len + max_new_tokens <= cfg.max_len:
    return
  if cfg.positions == 'learned':
    raise errors.InputError(
        f'prompts of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceed '
        f'config.model.max_len={cfg.max_len}, the positions this model learned: lower '
        'config.sample.max_new_tokens or shorten the prompts.')
  logging.log_first_n(
      logging.WARNING, 'prompts of %d tokens + max_new_tokens=%d run past config.model.max_len='
      '%d, the longest sequence this model trained on: positions=%r decodes them, but what it '
      'writes there is length generalisation, not what it learned.', 1, prompt_len,
      max_new_tokens, cfg.max_len, cfg.positions)


def prefill(module, params, tokens_BxP, pos_BxP, cache):
  """Runs the prompts through the model into the cache; returns (last logits_BxV, cache)."""
  outputs, cache = module.apply({'params': params}, tokens_BxP, pos_BxP, cache)
  return outputs['logits'][:, -1], cache


def decode_step(module, params, token_B, pos_B, cache):
  """Advances the model by one token per row; returns (logits_BxV, cache)."""
  outputs, cache = module.apply({'params': params}, token_B[:, None], pos_B[:, None], cache)
  return outputs['logits'][:, 0], cache
