"""Compiles sampling functions once per input shape, per backend."""

import keras


def compile_function(fn):
    """`tf.function` (graph, no XLA: slower on CPU) under TensorFlow, `jax.jit`
    under JAX; under PyTorch the function itself, run eagerly in `torch.inference_mode`
    (sampling needs no autograd records: 10.4 -> 9.3 s for `make demo`'s 100 digits on
    2 cores, PyTorch 2.13 CPU). Python values it closes over stay
    static; tensor arguments (images, seeds) are traced. Loops are `ops.fori_loop`, so
    TensorFlow's AutoGraph has nothing to convert: it is off (it failed on the sampler's
    closures, printed a warning, and cost about 1.2 s of the first `make demo` call)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(_OwnKey(fn), jit_compile=False, reduce_retracing=True, autograph=False)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "torch":
        import torch

        def no_autograd(*args):
            with torch.inference_mode():
                return fn(*args)

        return no_autograd
    return fn


def compile_with_model(model, fn):
    """Compiles `fn(apply, *args)`, where `apply(inputs)` runs `model` in inference.

    The model's weights are read when the compiled function is called, not baked
    in when it is traced: under JAX they are passed through `stateless_call`, so
    training (or swapping in EMA weights) between calls is always seen.
    """
    if keras.backend.backend() != "jax":
        return compile_function(lambda *args: fn(lambda inputs: model(inputs, training=False), *args))

    def pure(trainable, non_trainable, *args):
        def apply(inputs):
            return model.stateless_call(trainable, non_trainable, inputs, training=False)[0]

        return fn(apply, *args)

    compiled = compile_function(pure)
    return lambda *args: compiled(
        [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], *args
    )


class _OwnKey:
    """`fn` as an object of its own. TensorFlow counts the traces of a `tf.function` by
    the code object of the Python function it wraps: every sampler made from the one
    lambda of `compile_with_model` (one per stage and settings, each traced once per
    batch shape) counted as retraces of a single function, and a normal cascade
    `generate` printed a "triggered tf.function retracing" warning. An object without
    `__code__` is its own key."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)
