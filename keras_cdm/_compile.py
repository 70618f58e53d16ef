"""Compiles sampling functions once per input shape, per backend, and ahead of time."""

import keras


class Compiled:
    """A compiled function: call it, or `prepare(*args)` it ahead of time.

    `prepare` traces and compiles the function for arguments of the shapes and dtypes of
    `args` without running it (TensorFlow: `get_concrete_function`; JAX:
    `lower(...).compile()`, whose executable `jax.jit` then reuses; PyTorch: nothing to
    do), so the first call with such arguments starts at once. It is safe to call from
    another thread while other compiled functions run: tracing is Python work, running a
    graph or an XLA executable releases the GIL, so a cascade traces its later stages
    while the earlier ones sample. `ready(*args)`: whether a call or a `prepare` with
    arguments like these happened already.
    """

    def __init__(self, call, prepare=None, function=None):
        self._call, self._prepare, self.function = call, prepare, function
        self._ready = set()

    @property
    def can_prepare(self):
        return self._prepare is not None

    def __call__(self, *args):
        self._ready.add(_signature(args))
        return self._call(*args)

    def ready(self, *args):
        return _signature(args) in self._ready

    def prepare(self, *args):
        key = _signature(args)
        if self._prepare is not None and key not in self._ready:
            self._prepare(*args)
            self._ready.add(key)


def _signature(args):
    """The structure, shapes and dtypes of `args` (what a trace depends on)."""
    leaves = keras.tree.flatten(args)
    return str(keras.tree.map_structure(lambda _: None, args)), tuple(
        (tuple(leaf.shape), str(leaf.dtype)) if hasattr(leaf, "shape") else repr(leaf) for leaf in leaves)


def compile_function(fn):
    """`fn` as a `Compiled`: `tf.function` (graph, no XLA: slower on CPU) under TensorFlow,
    `jax.jit` under JAX; under PyTorch the function itself, run eagerly in
    `torch.inference_mode` (sampling needs no autograd records: 10.4 -> 9.3 s for `make
    demo`'s 100 digits on 2 cores, PyTorch 2.13 CPU). Python values it closes over stay
    static; tensor arguments (images, seeds) are traced. Loops are `ops.fori_loop`, so
    TensorFlow's AutoGraph has nothing to convert: it is off (it failed on the sampler's
    closures, printed a warning, and cost about 1.2 s of the first `make demo` call)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(_OwnKey(fn), jit_compile=False, reduce_retracing=True, autograph=False)
        return Compiled(function, function.get_concrete_function, function)
    if backend == "jax":
        import jax

        function = jax.jit(fn)
        return Compiled(function, lambda *args: function.lower(*args).compile(), function)
    if backend == "torch":
        import torch

        def no_autograd(*args):
            with torch.inference_mode():
                return fn(*args)

        return Compiled(no_autograd)
    return Compiled(fn)


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

    def weights():
        return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]

    # The weights' shapes never change, so `args` alone decide readiness.
    return Compiled(lambda *args: compiled._call(*weights(), *args),
                    lambda *args: compiled._prepare(*weights(), *args), compiled.function)


def can_prepare_in_background():
    """Whether compiled functions may be prepared in another thread: not inside a
    TensorFlow distribution strategy or under a Keras distribution (both are the calling
    thread's settings, which a background thread would not see)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.distribute.has_strategy()
    if backend == "jax":
        return keras.distribution.distribution() is None
    return False


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
