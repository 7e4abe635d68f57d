"""An LSTM language model (model kind 'lstm'), the recurrent baseline: token embedding, stacked
Flax LSTM cells (`nn.OptimizedLSTMCell`) run over time with `nn.scan`, dropout between layers,
and a tied or untied output projection. It follows the interface documented in `decoder.py`.

The recurrent carry is the decoding cache: `prefill` runs the prompt through every layer and
keeps each layer's (c, h), `decode_step` advances it by one token, so the sampler continues
prompts unchanged. Positions are not encoded; a position id below 0 marks padding, where the
carry is left as it was (the sampler left-pads prompts, training right-pads sequences).

Shapes in names: B batch, T time, E d_model (embedding and hidden width), V vocab, L layers.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selffb.models import decoder
from selffb.models import layers

OPTIONS = {'param_dtype': tuple(layers.DTYPES), 'dtype': tuple(layers.DTYPES)}
example_inputs = decoder.example_inputs
prefill, decode_step = decoder.prefill, decoder.decode_step


def forward(module, params, batch, rngs=None):
  """The outputs for a batch's 'inputs' and 'positions' (no packed rows: the carry would cross
  documents)."""
  return module.apply({'params': params}, batch['inputs'], batch.get('positions'), rngs=rngs)[0]


@dataclasses.dataclass(frozen=True)
class Config:
  """The keys of `config.model` an LSTM reads (the attention keys are not used)."""
  vocab_size: int
  num_layers: int
  d_model: int
  max_len: int = 64
  tie_embeddings: bool = True
  dropout: float = 0.0
  param_dtype: Any = jnp.float32
  dtype: Any = jnp.float32
  deterministic: bool = True  # Training mode is `.replace(deterministic=False)`.

  @classmethod
  def from_config(cls, c, vocab_size):
    for key, allowed in OPTIONS.items():
      if c[key] not in allowed:
        raise ValueError(f'config.model.{key}={c[key]!r}; choose one of {allowed}.')
    return cls(vocab_size=vocab_size, num_layers=c.num_layers, d_model=c.d_model,
               max_len=c.max_len, tie_embeddings=c.tie_embeddings, dropout=c.dropout,
               param_dtype=layers.DTYPES[c.param_dtype], dtype=layers.DTYPES[c.dtype])

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


def logical_sizes(cfg):
  """Logical axes: a cell's kernels are (embed, mlp), its gate width the 'mlp' axis; None for
  the axes of config.mesh.rules an LSTM has no parameters on (their rules do nothing)."""
  return {'embed': cfg.d_model, 'mlp': cfg.d_model, 'vocab': cfg.vocab_size,
          'layers': None, 'heads': None, 'head_dim': None}


def init_cache(cfg, batch, length):
  """Each layer's zero (c, h) carry; an LSTM's state does not grow with `length`."""
  del length
  zeros = jnp.zeros((batch, cfg.d_model), cfg.dtype)
  return {'layers': [(zeros, zeros) for _ in range(cfg.num_layers)]}


def check_decode(cfg, prompt_len, max_new_tokens):
  """Any length decodes: the state has a fixed size and no position encoding."""
  del cfg, prompt_len, max_new_tokens


class MaskedCell(nn.Module):
  """One LSTM step over a batch; rows whose token is padding keep their carry."""
  cfg: Config

  @nn.compact
  def __call__(self, carry, inputs):
    x_BxE, live_B = inputs
    cfg = self.cfg
    kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ('embed', 'mlp'))
    cell = nn.OptimizedLSTMCell(
        cfg.d_model, kernel_init=kernel, recurrent_kernel_init=nn.with_logical_partitioning(
            nn.initializers.orthogonal(), ('embed', 'mlp')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
        dtype=cfg.dtype, param_dtype=cfg.param_dtype, name='cell')
    new, h_BxE = cell(carry, x_BxE)
    keep = lambda n, o: jnp.where(live_B[:, None], n, o).astype(o.dtype)
    return jax.tree.map(keep, new, carry), h_BxE


class LstmLM(nn.Module):
  """`(tokens_BxT, pos_BxT=None, cache=None) -> ({'hidden', 'logits'}, cache)`."""
  cfg: Config

  @nn.compact
  def __call__(self, tokens_BxT, pos_BxT=None, cache=None):
    cfg = self.cfg
    live_BxT = jnp.ones(tokens_BxT.shape, bool) if pos_BxT is None else pos_BxT >= 0
    embed = layers.embed(cfg, cfg.vocab_size, ('vocab', 'embed'), 'embed')
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    x_BxTxE = drop(embed(tokens_BxT))
    over_time = nn.scan(MaskedCell, variable_broadcast='params', split_rngs={'params': False},
                        in_axes=1, out_axes=1)
    carries = cache['layers'] if cache is not None else init_cache(
        cfg, tokens_BxT.shape[0], 0)['layers']
    new = []
    for i in range(cfg.num_layers):
      carry, x_BxTxE = over_time(cfg, name=f'lstm_{i}')(carries[i], (x_BxTxE, live_BxT))
      x_BxTxE = drop(x_BxTxE)
      new.append(carry)
    logits_BxTxV = layers.output_logits(cfg, embed, x_BxTxE)
    cache = None if cache is None else {'layers': new}
    return {'hidden': x_BxTxE, 'logits': logits_BxTxV}, cache


def build(cfg):
  return LstmLM(cfg)
