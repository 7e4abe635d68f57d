"""The pure steps, which know neither the model kind nor the task: the model's `apply_fn`
(params, batch, rngs) -> outputs and the task's `loss_fn` / `eval_fn` are bound in; and their
jitted, sharded forms."""
import functools

import jax
import jax.numpy as jnp
import optax

from selffb import optim
from selffb import sharding
from selffb.cpu import xla_flags
from selffb.train import compiled


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def token_count(batch):
  """The default loss denominator: the batch's loss tokens."""
  return jnp.sum(batch['loss_mask'])


def _loss(params, batch, rng, denominator, step, *, apply_fn, loss_fn):
  return loss_fn(apply_fn(params, batch, {'dropout': rng}), batch, denominator, step)


def train_step(state, batch, rng, *, apply_fn, loss_fn, tx, accum_steps=1,
               denominator_fn=token_count):
  """One optimizer step: `(state, batch, rng) -> (state, metrics)`.

  `loss_fn(outputs, batch, denominator, step) -> (loss, aux)`, with `step` the steps done
  before this one (a loss may change over training); aux holds scalars that add up over
  microbatches, logged as metrics, among them 'ce', 'accuracy' and 'mean_f', the batch feedback
  the optimizer's scale reads. With accum_steps > 1 the batch is split into that many
  microbatches, scanned in turn; each loss is normalised by the whole batch's token count, so the
  summed gradients equal the whole batch's gradient. A task whose loss has other terms exports
  `denominators(batch)`, the whole batch's counts (any pytree), passed in its place.
  """
  rng = jax.random.fold_in(rng, state.step)
  denominator = denominator_fn(batch)
  grad_fn = jax.value_and_grad(functools.partial(_loss, apply_fn=apply_fn, loss_fn=loss_fn),
                               has_aux=True)
  if accum_steps == 1:
    (loss, aux), grads = grad_fn(state.params, batch, rng, denominator, state.step)
  else:
    micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

    def add(carry, xs):
      i, mb = xs
      out = grad_fn(state.params, mb, jax.random.fold_in(rng, i), denominator, state.step)
      return jax.tree.map(jnp.add, carry, out), None

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, jax.tree.map(
        lambda x: x[0], micro), rng, denominator, state.step))
    ((loss, aux), grads), _ = jax.lax.scan(add, zero, (jnp.arange(accum_steps), micro))
  updates, opt_state = tx.update(grads, state.opt_state, state.params, feedback=aux['mean_f'])
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, **aux, 'grad_norm': global_norm(grads),
             'feedback_scale': optim.feedback_scale(opt_state),
             'nonfinite_streak': optim.nonfinite_streak(opt_state)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch, *, apply_fn, eval_fn):
  """The task's teacher-forced sums (`eval_fn(outputs, batch)`) over one batch."""
  return eval_fn(apply_fn(params, batch), batch)


def apply_fn(s, training=False):
  """Setup `s`'s model as the steps call it: (params, batch, rngs=None) -> outputs."""
  return functools.partial(s.model.forward, s.module(training))


def jit_train_step(s, state_shardings):
  """train_step bound to Setup `s` (training mode: dropout on), jitted with the state's
  shardings, the batch split over the mesh, the state donated, and the XLA options; one per
  static signature (train/compiled.py)."""
  repl, batch_sh = sharding.replicated(s.mesh), sharding.batch_sharding(s.mesh)
  loss_fn = functools.partial(s.task.loss_fn, fb=s.fb)
  return compiled.cached('train_step', s, lambda: jax.jit(
      functools.partial(train_step, apply_fn=apply_fn(s, training=True), loss_fn=loss_fn,
                        tx=s.tx, accum_steps=s.config.train.grad_accum_steps,
                        denominator_fn=getattr(s.task, 'denominators', token_count)),
      in_shardings=(state_shardings, batch_sh, repl), out_shardings=(state_shardings, repl),
      donate_argnums=0, compiler_options=xla_flags.for_mesh(s.config, s.mesh)))


def jit_eval_step(s, params_sharding=None, eval_fn=None, name='eval_sums'):
  """eval_step for Setup `s` with its XLA options, over the task's `eval_sums` (or `eval_fn`, a
  task function of (outputs, batch) called `name`); sharded like the training state when
  `params_sharding` is given, else placed by its inputs; one per static signature."""
  shardings = {} if params_sharding is None else dict(
      in_shardings=(params_sharding, sharding.batch_sharding(s.mesh)),
      out_shardings=sharding.replicated(s.mesh))
  return compiled.cached(f'eval_step {name} sharded={bool(shardings)}', s, lambda: jax.jit(
      functools.partial(eval_step, apply_fn=apply_fn(s), eval_fn=eval_fn or s.task.eval_sums),
      compiler_options=xla_flags.for_mesh(s.config, s.mesh), **shardings))


def compile_steps(s, state_shardings):
  """(train step, eval step) for Setup `s`."""
  return jit_train_step(s, state_shardings), jit_eval_step(s, state_shardings.params)
