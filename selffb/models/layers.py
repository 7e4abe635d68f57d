"""Layers the model kinds share: projections, norms, rotary positions, remat policies.

Shapes in names: B batch, T query length, S key length, H heads, D head dim, E d_model, M mlp
dim, V vocab. Every parameter carries logical axis names that config.mesh.rules map to mesh axes.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
REMAT_POLICIES = {  # What the backward pass may keep instead of recomputing.
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def rope(x_BxTxHxD, pos_BxT, base):
  """Rotary position embedding (rotate-half form)."""
  half = x_BxTxHxD.shape[-1] // 2
  freq_1x1xK = (base ** (-jnp.arange(half, dtype=jnp.float32) / half))[None, None]
  angle_BxTx1xK = (pos_BxT[..., None].astype(jnp.float32) * freq_1x1xK)[:, :, None, :]
  sin, cos = jnp.sin(angle_BxTx1xK), jnp.cos(angle_BxTx1xK)
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxD.dtype)


def on_rows(fn, x, n_in=1):
  """fn applied to x with its leading (batch, time) dimensions merged into one, a free reshape.

  A projection's weight gradient then contracts a single dimension, which XLA:CPU's dots read
  in place; contracting two, XLA first copies one activation into a transposed layout."""
  lead = x.shape[:x.ndim - n_in]
  y = fn(x.reshape((-1,) + x.shape[x.ndim - n_in:]))
  return y.reshape(lead + y.shape[1:])


def dense(cfg, features, axes, name, in_axis=-1, bias=None):
  """A projection, fan-in init (std 1/sqrt(fan_in)); a zero-init bias if cfg.use_bias; on rows."""
  init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
  n_in = 1 if isinstance(in_axis, int) else len(in_axis)
  use_bias = cfg.use_bias if bias is None else bias
  layer = nn.DenseGeneral(features, axis=in_axis, use_bias=use_bias, dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype, kernel_init=init, name=name,
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 axes[n_in:]))
  return lambda x: on_rows(layer, x, n_in)


def norm(cfg, name):
  """cfg.norm ('layernorm' or 'rmsnorm') over the embedding axis."""
  scale = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  eps = getattr(cfg, 'norm_eps', 1e-6)  # flax's default; an imported BERT sets its own.
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(epsilon=eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=scale, name=name)
  bias = nn.with_logical_partitioning(nn.initializers.zeros, ('embed',))
  return nn.LayerNorm(epsilon=eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=scale, bias_init=bias, name=name)


def activation(cfg):
  """The MLP's activation: GELU, tanh-approximated ('gelu', also under 'swiglu's heads) or
  exact ('gelu_exact', BERT's)."""
  return lambda x: nn.gelu(x, approximate=cfg.mlp != 'gelu_exact')


def embed(cfg, num, axes, name):
  """An embedding table with std 1/sqrt(d_model)."""
  return nn.Embed(num, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
                  embedding_init=nn.with_logical_partitioning(
                      nn.initializers.normal(cfg.d_model ** -0.5), axes))


def embed_tokens(cfg, tokens_BxT, pos_BxT):
  """(the 'embed' table, token embeddings + learned 'pos_embed' positions if cfg.positions is
  'learned'), made in the calling module's scope; ids past max_len read the last row."""
  table = embed(cfg, cfg.vocab_size, ('vocab', 'embed'), 'embed')
  x_BxTxE = table(tokens_BxT)
  if cfg.positions == 'learned':
    positions = embed(cfg, cfg.max_len, (None, 'embed'), 'pos_embed')
    x_BxTxE = x_BxTxE + positions(jnp.clip(pos_BxT, 0, cfg.max_len - 1))
  return table, x_BxTxE


class Mlp(nn.Module):
  """GELU (tanh-approximated or exact) or SwiGLU feed-forward: E -> M -> E."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxTxE):
    cfg = self.cfg
    if cfg.mlp == 'swiglu':
      gate_BxTxM = dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'gate')(x_BxTxE)
      up_BxTxM = dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'up')(x_BxTxE)
      h_BxTxM = nn.silu(gate_BxTxM) * up_BxTxM
    else:
      h_BxTxM = activation(cfg)(dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'up')(x_BxTxE))
    return dense(cfg, cfg.d_model, ('mlp', 'embed'), 'down')(h_BxTxM)


def output_logits(cfg, embed, x_BxTxE):
  """float32 logits: through the input embedding's transpose if cfg.tie_embeddings, else
  through an 'unembed' projection of the calling module's own."""
  if cfg.tie_embeddings:
    logits_BxTxV = on_rows(embed.attend, x_BxTxE)
  else:
    unembed = dense(cfg, cfg.vocab_size, ('embed', 'vocab'), 'unembed', bias=False)
    logits_BxTxV = unembed(x_BxTxE)
  return logits_BxTxV.astype(jnp.float32)
