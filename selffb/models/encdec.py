"""An encoder-decoder Transformer (model kind 'encdec'): a bidirectional encoder over the source
(the prompt) and a decoder with causal self-attention and cross-attention to the encoder's
output, pre-norm blocks of the decoder's layers (`layers.py`, `attention.py`), one embedding
shared by both sides and, if tied, by the output. `config.model` is read as for the decoder;
each side has `num_layers` blocks. It follows the interface documented in `decoder.py`, with
`SEQ2SEQ = True`: a task's batches then carry `source` and `source_positions` (the prompt) next
to `inputs` (bos + answer, shifted) and decoder `positions` that continue from the prompt's
last id, as a decoder-only model's would.

Decoding through the same sampler: `prefill` encodes the (left-padded) prompt once, computes
every layer's cross-attention keys and values from it, and starts the decoder on the prompt's
first token (bos) with the prompt's last id; `decode_step` advances the decoder's
self-attention KV cache by one token (the sampler's ids continue the prompt's) and reads the
cached cross keys and values.

Shapes in names: B batch, T target length, S source length, E d_model, V vocab.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from selffb.models import attention
from selffb.models import decoder
from selffb.models import layers

SEQ2SEQ = True
logical_sizes, check_decode = decoder.logical_sizes, decoder.check_decode


class Config(decoder.Config):
  """The decoder's hyperparameters; its blocks are neither scanned nor rematerialised."""

  @classmethod
  def from_config(cls, c, vocab_size):
    if c.scan_layers or c.remat != 'none':
      raise ValueError("config.model.kind='encdec' runs its blocks unrolled, without remat: set "
                       "config.model.scan_layers=False and config.model.remat='none'.")
    return super().from_config(c, vocab_size)


def init_cache(cfg, batch, length):
  """The decoder's self-attention cache (as the decoder's); prefill adds the cross-attention
  keys and values of the source."""
  return {**decoder.init_cache(cfg, batch, length), 'cross': None}


class EncoderBlock(nn.Module):
  cfg: Config

  @nn.compact
  def __call__(self, x_BxSxE, pos_BxS):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    y_BxSxE = layers.norm(cfg, 'attn_norm')(x_BxSxE)
    h_BxSxE, _ = attention.Attention(cfg, name='attn')(y_BxSxE, pos_BxS, y_BxSxE, pos_BxS)
    x_BxSxE = x_BxSxE + drop(h_BxSxE)
    return x_BxSxE + drop(layers.Mlp(cfg, name='mlp')(layers.norm(cfg, 'mlp_norm')(x_BxSxE)))


class DecoderBlock(nn.Module):
  cfg: Config

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, kv_pos_BxS, layer_cache, index, memory, cross_kv):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    h_BxTxE, layer_cache = attention.CausalSelfAttention(cfg, name='attn')(
        layers.norm(cfg, 'attn_norm')(x_BxTxE), pos_BxT, kv_pos_BxS, layer_cache, index)
    x_BxTxE = x_BxTxE + drop(h_BxTxE)
    mem_BxSxE, mem_pos_BxS = memory if memory is not None else (None, None)
    h_BxTxE, cross_kv = attention.Attention(cfg, name='cross')(
        layers.norm(cfg, 'cross_norm')(x_BxTxE), pos_BxT, mem_BxSxE, mem_pos_BxS, cross_kv)
    x_BxTxE = x_BxTxE + drop(h_BxTxE)
    x_BxTxE = x_BxTxE + drop(layers.Mlp(cfg, name='mlp')(layers.norm(cfg, 'mlp_norm')(x_BxTxE)))
    return x_BxTxE, layer_cache, cross_kv


class EncDec(nn.Module):
  """`(tokens_BxT, pos_BxT=None, cache=None, source_BxS=None, src_pos_BxS=None) ->
  ({'hidden', 'logits'}, cache)`: the decoder over `tokens` attending to the encoded source
  (given), or to the cross keys and values in `cache` (decoding, no source)."""
  cfg: Config

  def _embed(self, embed, tokens, pos):
    """Token embeddings (+ the learned position table both sides share, `embed[1]`), dropped
    out; `embed` is (token table, position table or None)."""
    cfg = self.cfg
    x = embed[0](tokens)
    if embed[1] is not None:
      x = x + embed[1](jnp.clip(pos, 0, cfg.max_len - 1))
    return nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)(x)

  def _encode(self, embed, source_BxS, src_pos_BxS):
    x_BxSxE = self._embed(embed, source_BxS, src_pos_BxS)
    for i in range(self.cfg.num_layers):
      x_BxSxE = EncoderBlock(self.cfg, name=f'encoder_{i}')(x_BxSxE, src_pos_BxS)
    return layers.norm(self.cfg, 'encoder_norm')(x_BxSxE), src_pos_BxS

  @nn.compact
  def __call__(self, tokens_BxT, pos_BxT=None, cache=None, source_BxS=None, src_pos_BxS=None):
    cfg = self.cfg
    arange = lambda x: jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
    pos_BxT = arange(tokens_BxT) if pos_BxT is None else pos_BxT
    embed = layers.embed(cfg, cfg.vocab_size, ('vocab', 'embed'), 'embed')
    tables = (embed, layers.embed(cfg, cfg.max_len, (None, 'embed'), 'pos_embed')
              if cfg.positions == 'learned' else None)  # One of each: both sides read them.
    memory = None
    if source_BxS is not None:
      memory = self._encode(tables, source_BxS,
                            arange(source_BxS) if src_pos_BxS is None else src_pos_BxS)
    x_BxTxE = self._embed(tables, tokens_BxT, pos_BxT)
    index, kv_pos_BxS, selfs, crosses = None, pos_BxT, [None] * cfg.num_layers, [None] * (
        cfg.num_layers)
    if cache is not None:
      index, selfs = cache['index'], cache['layers']
      kv_pos_BxS = jax.lax.dynamic_update_slice(cache['pos'], pos_BxT, (0, index))
      crosses = crosses if memory is not None else cache['cross']
    new_selfs, new_crosses = [], []
    for i in range(cfg.num_layers):
      x_BxTxE, layer_cache, cross_kv = DecoderBlock(cfg, name=f'decoder_{i}')(
          x_BxTxE, pos_BxT, kv_pos_BxS, selfs[i], index, memory, crosses[i])
      new_selfs.append(layer_cache)
      new_crosses.append(cross_kv)
    x_BxTxE = layers.norm(cfg, 'final_norm')(x_BxTxE)
    logits_BxTxV = layers.output_logits(cfg, embed, x_BxTxE)
    if cache is not None:
      cache = {'layers': new_selfs, 'pos': kv_pos_BxS, 'index': index + tokens_BxT.shape[1],
               'cross': new_crosses}
    return {'hidden': x_BxTxE, 'logits': logits_BxTxV}, cache


def build(cfg):
  return EncDec(cfg)


def example_inputs(cfg, seq_len):
  del cfg
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return (tokens, None, None, tokens)


def forward(module, params, batch, rngs=None):
  """The outputs for a seq2seq batch: the decoder's 'inputs' and 'positions' over its 'source'
  and 'source_positions'."""
  return module.apply({'params': params}, batch['inputs'], batch.get('positions'), None,
                      batch['source'], batch.get('source_positions'), rngs=rngs)[0]


def prefill(module, params, tokens_BxP, pos_BxP, cache):
  """Encodes the left-padded prompts and starts the decoder on each one's first token (bos) with
  the prompt's last id, as training lays the target out; returns (logits_BxV for the first
  answer token, cache)."""
  first_Bx1 = jnp.take_along_axis(tokens_BxP, jnp.argmax(pos_BxP >= 0, axis=1)[:, None], 1)
  outputs, cache = module.apply({'params': params}, first_Bx1, pos_BxP[:, -1:], cache,
                                tokens_BxP, pos_BxP)
  return outputs['logits'][:, -1], cache


decode_step = decoder.decode_step  # The sampler's ids continue the prompt's, as the target's do.
