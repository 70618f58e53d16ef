"""Compiles a sampling function once per input shape, per backend."""

import keras


def compile_function(fn):
    """`tf.function` (graph, no XLA: slower on CPU) under TensorFlow, `jax.jit`
    under JAX; the function itself elsewhere. Python ints it closes over stay
    static; tensor arguments (images, seeds) are traced."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=False, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn
