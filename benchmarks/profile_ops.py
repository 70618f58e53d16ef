"""Where the time of a U-Net forward pass and training step goes, by kind of operation.

Run from the repository root (TensorFlow backend):
    python benchmarks/profile_ops.py                      # float32 and bfloat16, batch 32
    python benchmarks/profile_ops.py --precisions float32 --parts forward

Profiles the matched U-Net of `unet_vs_diffusers.py` with the TensorFlow profiler (the
compiled inference call, and `DiffusionModel.fit` steps with Adam and EMA), sums the
executor's per-op times by op type and by class (convolution, attention matmuls, group
norm / activations / other element-wise, random numbers for dropout, optimizer), and
sets them against a roofline: the time the convolution and attention FLOPs would take
at the matrix-multiply peak measured in the same run. Op times are summed over the
executor's threads (ops that overlap both count), so read the shares. Prints tables and
writes docs/performance/profile_ops_tensorflow_cpu.json.
"""

import argparse
import collections
import glob
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

import peer

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}

# op type (after the "_Mkl"/"_MklNative" prefixes are dropped) -> class
CLASSES = {
    "convolution": ("Conv2D", "FusedConv2D", "PadWithConv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
                    "Conv2DBackpropFilterWithBias", "BiasAddGrad"),
    "attention matmuls": ("Einsum", "BatchMatMulV2", "MatMul", "FusedMatMul", "Softmax", "SoftmaxGrad",
                          "Transpose"),
    "dropout random numbers": ("StatelessRandomUniformV2", "StatelessRandomGetKeyCounter", "GreaterEqual",
                               "SelectV2"),
    "optimizer": ("AssignAddVariableOp", "AssignSubVariableOp", "AssignVariableOp", "ReadVariableOp", "Sqrt",
                  "RealDiv"),
}


def op_class(op):
    for name, ops in CLASSES.items():
        if op in ops:
            return name
    return "group norm, activations, other element-wise"


def _strip(op):
    for prefix in ("_MklNative", "_Mkl"):
        if op.startswith(prefix):
            return op[len(prefix):]
    return op


def profile(run, repeats):
    """{op type: (ms per call of `run`, ops per call)} from the TF profiler's executor events."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(repeats):
            run()
        tf.profiler.experimental.stop()
        path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    seconds, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name:  # not "node:OpType": executor bookkeeping
                    continue
                op = _strip(name.rsplit(":", 1)[-1])
                seconds[op] += event.duration_ps * 1e-12
                counts[op] += 1
    return {op: (1e3 * seconds[op] / repeats, counts[op] // repeats) for op in seconds}


def flops(unet, batch):
    """Convolution and attention-matmul FLOPs of one forward pass (2 per multiply-add), from
    the input shape each layer was built with."""
    import keras

    conv = attention = 0
    for layer in unet._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, out_h, out_w, _ = layer.compute_output_shape(layer._build_shapes_dict["input_shape"])
            conv += 2 * batch * out_h * out_w * kh * kw * cin * cout
        elif type(layer).__name__ == "AttentionBlock":
            _, h, w, c = layer._build_shapes_dict["input_shape"]
            attention += 2 * batch * (4 * h * w * c * c + 2 * (h * w) ** 2 * c)
    return conv, attention


def matmul_peak(precision, n=2048, repeats=10):
    """GFLOP/s of an n x n x n product: a peak, so the best of the repeats."""
    return 2 * n**3 / min(peer.keras_matmul_seconds(precision, n, repeats)) / 1e9


def table(title, ops, wall_ms, roofline_ms):
    total = sum(ms for ms, _ in ops.values())
    by_class = collections.Counter()
    for op, (ms, _) in ops.items():
        by_class[op_class(op)] += ms
    print(f"\n{title}: {wall_ms:.0f} ms per call; op time summed over threads {total:.0f} ms")
    print(f"{'class':45s} {'op ms':>9s} {'share':>7s}")
    for name, ms in by_class.most_common():
        print(f"{name:45s} {ms:9.1f} {100 * ms / total:6.1f}%")
    print(f"{'op type':45s} {'op ms':>9s} {'share':>7s} {'ops':>6s}")
    for op, (ms, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:15]:
        print(f"{op:45s} {ms:9.1f} {100 * ms / total:6.1f}% {n:6d}")
    print(f"roofline (convolution + attention FLOPs at the measured matmul peak): {roofline_ms:.0f} ms "
          f"= {100 * roofline_ms / wall_ms:.0f} % of the measured time")
    return {"wall ms": wall_ms, "op ms summed over threads": total, "roofline ms": roofline_ms,
            "classes ms": dict(by_class), "ops": {op: {"ms": ms, "count": n} for op, (ms, n) in ops.items()}}


def run(precision, parts, batch, repeats):
    import keras

    from keras_cdm import DiffusionModel, GaussianDiffusion
    from keras_cdm._compile import compile_function

    keras.utils.set_random_seed(0)
    unet = peer.ours_unet(dtype=PRECISIONS[precision])
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch * repeats, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, batch * repeats).astype("int32")
    inputs = {"noisy_images": keras.ops.convert_to_tensor(images[:batch]),
              "timesteps": keras.ops.convert_to_tensor(rng.integers(0, 1000, batch).astype("int32")),
              "labels": keras.ops.convert_to_tensor(labels[:batch])}
    conv, attention = flops(unet, batch)
    peak = matmul_peak(precision)
    out = {"matmul peak GFLOP/s": peak, "forward GFLOP": (conv + attention) / 1e9,
           "forward convolution GFLOP": conv / 1e9, "forward attention GFLOP": attention / 1e9}
    print(f"{precision}: matmul peak {peak:.0f} GFLOP/s; forward {conv / 1e9:.1f} GFLOP of convolutions and "
          f"{attention / 1e9:.1f} GFLOP of attention matmuls for a batch of {batch}")
    if "forward" in parts:
        forward = compile_function(lambda inputs: unet(inputs, training=False))
        call = lambda: keras.ops.convert_to_numpy(forward(inputs)[:1, :1, :1, :1])  # noqa: E731
        for _ in range(3):
            call()
        wall = statistics.median(peer.timed(call, repeats)) * 1e3
        out["forward"] = table(f"{precision} forward, batch {batch}", profile(call, repeats), wall,
                               (conv + attention) / peak / 1e6)
    if "train" in parts:
        model = DiffusionModel(unet, GaussianDiffusion(1000, "linear"), random_flip=True, seed=0)
        model.compile()
        model.optimizer.build(model.trainable_variables)
        data = {"images": images, "labels": labels}
        ends = []
        timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
        fit = lambda: model.fit(data, batch_size=batch, epochs=1, verbose=0, callbacks=[timer])  # noqa: E731
        fit()
        ends.clear()
        fit()  # the steps after the first of an epoch: fit's own set-up is not a step's time
        wall = statistics.median(np.diff(ends)) * 1e3
        ops = profile(fit, 1)
        ops = {op: (ms / repeats, n // repeats) for op, (ms, n) in ops.items()}
        out["train"] = table(f"{precision} training step (fit, Adam, EMA), batch {batch}", ops, wall,
                             3 * (conv + attention) / peak / 1e6)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="calls profiled (forward) / steps per epoch (fit)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--parts", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    args = parser.parse_args()
    import keras

    if keras.backend.backend() != "tensorflow":
        sys.exit(f"profile_ops.py profiles TensorFlow ops; KERAS_BACKEND={keras.backend.backend()!r}")
    results = {"machine": peer.machine(), "batch": args.batch}
    for precision in args.precisions:
        results[precision] = run(precision, args.parts, args.batch, args.repeats)
    peer.write_results("profile_ops_tensorflow_cpu", results)


if __name__ == "__main__":
    main()
