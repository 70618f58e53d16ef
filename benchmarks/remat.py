"""Activation rematerialization (`DiffusionUNet(remat=True)`): memory and step time, with / without.

Run from the repository root:
    python benchmarks/remat.py [--stages cdm_imagenet32_base ...] [--time-stage cdm_imagenet64_to_128]
                               [--backends jax tensorflow] [--steps 2] [--skip-timing]

Two measurements, each with and without remat in the same run, printed as ratios (with / without):

1. Activation memory of a training step of every paper stage, at batch 1 and 2, from JAX:
   the bytes of the residuals JAX's autodiff keeps from the forward pass for the backward pass
   (`jax._src.ad_checkpoint.saved_residuals` of the stage's training loss, the weights
   themselves left out). The stage is built abstractly (`keras.StatelessScope`: no weights
   are allocated) and traced with `jax.ShapeDtypeStruct` inputs: nothing runs, a few seconds
   a stage. This is what remat changes. XLA's own `compile().memory_analysis()` is printed with
   `--xla` (minutes of compilation per stage): on XLA:CPU it shows no saving, as XLA:CPU
   common-subexpression-eliminates the recomputation back into the forward pass (the compiled
   HLO reuses the forward values); TPUs and GPUs keep JAX's optimization barriers.
2. Step time and peak resident memory (ru_maxrss) of real training steps at batch 1 of one paper
   stage (`--time-stage`, default the smallest, cdm_imagenet64_to_128, 536 M parameters), on each
   backend of `--backends`, one fresh process per setting. The optimizer is plain SGD so that
   the process holds the weights and their gradients only (Adam and the EMA would add 3 more
   copies of the weights, the same with and without remat); the first step (tracing) is not timed.
"""

import argparse
import json
import os
import subprocess
import sys
import time

PAPER_STAGES = ("cdm_imagenet32_base", "cdm_imagenet32_to_64", "cdm_imagenet64_to_128", "cdm_imagenet64_to_256")
MIB = 2**20


def stage_config(name, remat):
    """The preset's DiffusionModel config, with `remat` set on its U-Net."""
    from keras_cdm import presets

    config = json.loads((presets.builtin_preset_path(name) / "config.json").read_text())
    config["config"]["unet"]["config"]["remat"] = remat
    return config


def abstract_stage(name, remat):
    """The stage, compiled (Adam + EMA), with every variable created but none allocated
    (`StatelessScope(initialize_variables=False)`; trace it inside `_abstract()`)."""
    import keras

    with _abstract():
        model = keras.saving.deserialize_keras_object(stage_config(name, remat), safe_mode=True)
    model.compile()  # the optimizer's scalars exist outside the scope
    with _abstract():
        model.optimizer.build(model.trainable_variables)
    return model


def _abstract():
    """A scope in which variables are created without values, and which Keras' own stateless
    scopes (in `stateless_call`) nest in: on leaving an outermost scope, Keras would give every
    variable created without a value its value, allocating the stage's weights and slots."""
    import keras

    return keras.StatelessScope(initialize_variables=False)


def _structs(model, batch):
    import jax

    sds = lambda v: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype)  # noqa: E731
    state = [[sds(v) for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.metrics_variables, model.optimizer.variables)]
    unet = model.unet
    data = {"images": jax.ShapeDtypeStruct((batch, unet.image_size, unet.image_size, unet.image_channels), "float32")}
    if unet.num_classes:
        data["labels"] = jax.ShapeDtypeStruct((batch,), "int32")
    return state, data


def residual_bytes(model, batch):
    """Bytes JAX keeps from the forward pass of the training loss for its backward pass
    (the weights, arguments of the loss, left out)."""
    from jax._src.ad_checkpoint import saved_residuals
    import numpy as np

    (trainable, non_trainable, metrics, optimizer), data = _structs(model, batch)

    def loss(trainable, non_trainable, metrics, optimizer, data):
        return model.compute_loss_and_updates(trainable, non_trainable, metrics, data, None, None, training=True,
                                              optimizer_variables=optimizer)[0]

    with _abstract():
        residuals = saved_residuals(loss, trainable, non_trainable, metrics, optimizer, data)
    return sum(int(np.prod(aval.shape)) * aval.dtype.itemsize for aval, why in residuals if "argument" not in why)


def xla_memory(model, batch):
    """XLA's memory analysis of the compiled training step (`model.train_step`, state donated)."""
    import jax

    (trainable, non_trainable, metrics, optimizer), data = _structs(model, batch)
    step = jax.jit(model.train_step, donate_argnums=0)
    with _abstract():
        lowered = step.lower((trainable, non_trainable, optimizer, metrics), data)
    analysis = lowered.compile().memory_analysis()
    return {"temp": analysis.temp_size_in_bytes, "arguments": analysis.argument_size_in_bytes}


def memory_table(stages, xla):
    rows = []
    for name in stages:
        row = {"stage": name}
        for remat in (False, True):
            model = abstract_stage(name, remat)
            row["parameters"] = sum(_size(v) for v in model.trainable_variables)
            key = "remat" if remat else "no remat"
            row[key] = {batch: residual_bytes(model, batch) for batch in (1, 2)}
            if xla:
                row[key + " xla"] = xla_memory(model, 1)
        rows.append(row)
        per_example = {key: row[key][2] - row[key][1] for key in ("no remat", "remat")}
        print(f"{name}: {row['parameters'] / 1e6:.0f} M parameters; activations kept for the backward pass, "
              f"batch 1: {row['no remat'][1] / MIB:,.0f} MiB without remat, {row['remat'][1] / MIB:,.0f} MiB with "
              f"(ratio {row['remat'][1] / row['no remat'][1]:.2f}); per extra example {per_example['no remat'] / MIB:,.0f}"
              f" -> {per_example['remat'] / MIB:,.0f} MiB (ratio {per_example['remat'] / per_example['no remat']:.2f})",
              flush=True)
        if xla:
            print(f"  XLA:CPU memory analysis, batch 1, temp: {row['no remat xla']['temp'] / MIB:,.0f} MiB without, "
                  f"{row['remat xla']['temp'] / MIB:,.0f} MiB with remat", flush=True)
    return rows


def _size(variable):
    size = 1
    for dim in variable.shape:
        size *= dim
    return size


def timed_steps(name, remat, steps):
    """Runs in a fresh process: `steps` + 1 training steps at batch 1 (SGD); prints JSON."""
    import resource

    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.saving.deserialize_keras_object(stage_config(name, remat), safe_mode=True)
    model.compile(optimizer=keras.optimizers.SGD(1e-4))
    unet = model.unet
    rng = np.random.default_rng(0)
    batch = {"images": rng.uniform(-1, 1, (1, unet.image_size, unet.image_size, 3)).astype("float32")}
    if unet.num_classes:
        batch["labels"] = np.array([1])
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = float(model.train_on_batch(batch, return_dict=True)["loss"])
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"first": times[0], "steps": times[1:], "peak_rss": peak, "loss": loss}))


def timing_table(name, backends, steps):
    results = {}
    for backend in backends:
        for remat in (False, True):
            env = {**os.environ, "KERAS_BACKEND": backend}
            command = [sys.executable, __file__, "--child", name, str(remat), str(steps)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            results[backend, remat] = json.loads(out.strip().splitlines()[-1])
        off, on = results[backend, False], results[backend, True]
        step_off, step_on = min(off["steps"]), min(on["steps"])
        print(f"{name}, {backend}, batch 1: step {step_off:.1f} s without remat, {step_on:.1f} s with "
              f"(ratio {step_on / step_off:.2f}); peak resident memory {off['peak_rss'] / 2**30:.2f} GiB without, "
              f"{on['peak_rss'] / 2**30:.2f} GiB with (ratio {on['peak_rss'] / off['peak_rss']:.2f}, "
              f"{(off['peak_rss'] - on['peak_rss']) / 2**30:.2f} GiB less)", flush=True)
    return results


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return timed_steps(sys.argv[2], sys.argv[3] == "True", int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", default=PAPER_STAGES)
    parser.add_argument("--time-stage", default="cdm_imagenet64_to_128")
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first")
    parser.add_argument("--xla", action="store_true", help="also XLA's compiled memory analysis (slow)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if not args.skip_memory:
        if os.environ.get("KERAS_BACKEND") != "jax":
            sys.exit("The memory part traces with JAX: run with KERAS_BACKEND=jax (the timing part picks its "
                     "backends itself).")
        memory_table(args.stages, args.xla)
    if not args.skip_timing:
        timing_table(args.time_stage, args.backends, args.steps)


if __name__ == "__main__":
    main()
