"""A bidirectional Transformer encoder with one task head (model kind 'encoder'): BERT's shape.

Every token attends to every valid token of its row (position id -1 marks padding; with packed
rows, only to its own segment). The blocks are the decoder's layers (`layers.py`,
`attention.Attention`), pre-norm, or post-norm as BERT (`norm_position='post'`: a LayerNorm after
the embeddings and after each residual add, no final norm). Optional token-type embeddings
(`type_vocab_size` > 0) are added to the token and position embeddings.

The head (`config.model.head`) reads the final hidden states:
  'mlm'       masked-LM logits over the vocabulary: dense + activation + norm, then the input
              embedding's transpose (if tied) plus a bias, as BERT's `cls.predictions`;
  'classify'  one row's label logits [B, 1, num_labels] from the pooled hidden state: the first
              token's through a tanh dense layer (BERT's pooler, `pooling='first'`) or the mean
              over the row's valid tokens (`'mean'`);
  'tag'       per-token label logits [B, T, num_labels].
Outputs: {'hidden': [B, T, E], 'logits': the head's, float32, and 'pooled': [B, E] for
'classify'}. Parameter groups (`param_group`) name what `config.optim.freeze` can freeze.
It follows the interface documented in `decoder.py`, without decoding.

Shapes in names: B batch, T length, E d_model, V vocab, C labels.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from selffb import errors
from selffb.models import attention
from selffb.models import bert_import
from selffb.models import decoder
from selffb.models import layers

HEADS = ('mlm', 'classify', 'tag')
OPTIONS = {'head': HEADS, 'pooling': ('first', 'mean'), 'norm_position': ('pre', 'post')}
SEGMENTS = True  # Trains on packed rows (a batch's 'segments').
logical_sizes, example_inputs = decoder.logical_sizes, decoder.example_inputs


@dataclasses.dataclass(frozen=True)
class Config(decoder.Config):
  """The decoder's hyperparameters and the encoder's own: norm placement and epsilon,
  token types, the head."""
  norm_eps: float = 1e-6
  norm_position: str = 'pre'
  type_vocab_size: int = 0
  head: str = 'mlm'
  num_labels: int = 0
  pooling: str = 'first'

  @classmethod
  def from_config(cls, c, vocab_size):
    for key, allowed in OPTIONS.items():
      if c[key] not in allowed:
        raise ValueError(f"config.model.{key}={c[key]!r}; choose one of {allowed} (model.kind="
                         "'encoder').")
    if c.head != 'mlm' and c.num_labels < 2:
      raise ValueError(f'config.model.head={c.head!r} needs config.model.num_labels >= 2 (the '
                       f'task sets it to its label count), not {c.num_labels}.')
    if c.scan_layers:
      raise ValueError("config.model.kind='encoder' runs its layers unrolled: set "
                       'config.model.scan_layers=False.')
    return super().from_config(c, vocab_size)


class Block(nn.Module):
  cfg: Config

  @nn.compact
  def __call__(self, x_BxTxE, pos_BxT, seg_BxT):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    attn = attention.Attention(cfg, name='attn')
    mlp = layers.Mlp(cfg, name='mlp')
    attn_norm, mlp_norm = layers.norm(cfg, 'attn_norm'), layers.norm(cfg, 'mlp_norm')
    if cfg.norm_position == 'post':
      h_BxTxE = attn(x_BxTxE, pos_BxT, x_BxTxE, pos_BxT, seg_BxS=seg_BxT)[0]
      x_BxTxE = attn_norm(x_BxTxE + drop(h_BxTxE))
      return mlp_norm(x_BxTxE + drop(mlp(x_BxTxE)))
    y_BxTxE = attn_norm(x_BxTxE)
    x_BxTxE = x_BxTxE + drop(attn(y_BxTxE, pos_BxT, y_BxTxE, pos_BxT, seg_BxS=seg_BxT)[0])
    return x_BxTxE + drop(mlp(mlp_norm(x_BxTxE)))


class Encoder(nn.Module):
  """`(tokens_BxT, pos_BxT=None, seg_BxT=None, types_BxT=None) -> (outputs, None)`."""
  cfg: Config

  @nn.compact
  def __call__(self, tokens_BxT, pos_BxT=None, seg_BxT=None, types_BxT=None):
    cfg = self.cfg
    if pos_BxT is None:
      pos_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    embed, x_BxTxE = layers.embed_tokens(cfg, tokens_BxT, pos_BxT)
    if cfg.type_vocab_size:
      types_BxT = jnp.zeros_like(tokens_BxT) if types_BxT is None else types_BxT
      x_BxTxE = x_BxTxE + layers.embed(cfg, cfg.type_vocab_size, (None, 'embed'),
                                       'type_embed')(types_BxT)
    if cfg.norm_position == 'post':
      x_BxTxE = layers.norm(cfg, 'embed_norm')(x_BxTxE)
    x_BxTxE = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)(x_BxTxE)
    block = Block if cfg.remat == 'none' else nn.remat(Block,
                                                       policy=layers.REMAT_POLICIES[cfg.remat])
    for i in range(cfg.num_layers):
      x_BxTxE = block(cfg, name=f'layer_{i}')(x_BxTxE, pos_BxT, seg_BxT)
    if cfg.norm_position == 'pre':
      x_BxTxE = layers.norm(cfg, 'final_norm')(x_BxTxE)
    return {'hidden': x_BxTxE, **self._head(embed, x_BxTxE, pos_BxT)}, None

  def _head(self, embed, x_BxTxE, pos_BxT):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    if cfg.head == 'mlm':
      h_BxTxE = layers.activation(cfg)(
          layers.dense(cfg, cfg.d_model, ('embed', None), 'mlm_transform', bias=True)(x_BxTxE))
      h_BxTxE = layers.norm(cfg, 'mlm_norm')(h_BxTxE)
      bias_V = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   ('vocab',)),
                          (cfg.vocab_size,), cfg.param_dtype)
      return {'logits': layers.output_logits(cfg, embed, h_BxTxE) + bias_V.astype(jnp.float32)[
          None, None]}
    labels = lambda name: layers.dense(cfg, cfg.num_labels, ('embed', None), name, bias=True)
    if cfg.head == 'tag':
      return {'logits': labels('tagger')(drop(x_BxTxE)).astype(jnp.float32)}
    if cfg.pooling == 'first':
      pooled_BxE = jnp.tanh(layers.dense(cfg, cfg.d_model, ('embed', None), 'pooler',
                                         bias=True)(x_BxTxE[:, 0]))
    else:
      valid_BxTx1 = (pos_BxT >= 0)[..., None].astype(x_BxTxE.dtype)
      pooled_BxE = (x_BxTxE * valid_BxTx1).sum(1) / jnp.maximum(valid_BxTx1.sum(1), 1)
    logits_BxC = labels('classifier')(drop(pooled_BxE)).astype(jnp.float32)
    return {'logits': logits_BxC[:, None, :], 'pooled': pooled_BxE}


def build(cfg):
  return Encoder(cfg)


def forward(module, params, batch, rngs=None):
  """The outputs for a batch's 'inputs' (with its 'positions', and 'segments' and
  'token_types' if it has them)."""
  return module.apply({'params': params}, batch['inputs'], batch.get('positions'),
                      batch.get('segments'), batch.get('token_types'), rngs=rngs)[0]


EMBEDDINGS = ('embed', 'pos_embed', 'type_embed', 'embed_norm')
HEAD_PARAMS = ('mlm_transform', 'mlm_norm', 'mlm_bias', 'unembed', 'pooler', 'classifier',
               'tagger')


def param_group(name):
  """The group of a top-level parameter name: 'embeddings', a layer index, 'head' or 'final'
  (the pre-norm encoder's final norm, trained with the top layers)."""
  if name in EMBEDDINGS:
    return 'embeddings'
  if name in HEAD_PARAMS:
    return 'head'
  if name.startswith('layer_'):
    return int(name[len('layer_'):])
  return 'final'


def checkpoint_problems(c, path):
  """None if `path` is not a checkpoint of another library this kind imports (a Hugging Face
  BERT directory); else the problems of config.model `c` for holding it."""
  if not bert_import.is_checkpoint(path):
    return None
  try:
    wrong = bert_import.mismatches(c, bert_import.read_config(path))
  except errors.InputError as e:
    return [f'config.model.init_from: {e}']
  return [f'config.model.init_from={path!r} is a BERT checkpoint; the encoder that holds it '
          f"needs {', '.join(wrong)} (configs/bert_conll2003.py sets them from its "
          'config.json).'] if wrong else []


def load_checkpoint(path):
  """The parameters of the checkpoint at `path` (one checkpoint_problems accepts), as numpy."""
  return bert_import.load_params(path)
