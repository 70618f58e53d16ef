"""Sampling: keras_cdm's compiled reverse process vs diffusers' scheduler loop, same run.

Run from the repository root (needs `pip install torch diffusers`):
    KERAS_BACKEND=tensorflow python benchmarks/sampling_vs_diffusers.py
    KERAS_BACKEND=jax python benchmarks/sampling_vs_diffusers.py      # on a GPU: JAX vs PyTorch CUDA
Options: --steps 100, --batch 16, --repeats 3, --precisions float32 bfloat16, --parts stage cascade,
--device auto|cpu|cuda (PyTorch's side).

- stage: one stage, the matched 32x32 U-Net of `unet_vs_diffusers.py`, `--steps` ancestral steps
  for a batch of `--batch`: `DiffusionModel.generate` (one compiled loop) against
  `UNet2DModel` + `DDPMScheduler.step` in a Python loop under `torch.inference_mode`; first
  call (compilation included) and the median of `--repeats` steady calls.
- cascade: the trained `cdm_mnist32` cascade (8 -> 16 -> 32, its shipped step counts) end to
  end for a batch of `--batch`, first call and steady state, against diffusers U-Nets of the
  same widths, depths and attention per stage (random weights, same number of steps per
  stage, low-resolution input resized bicubically and concatenated as ours does).
Prints tables and ratios (diffusers seconds / ours; > 1 means we are faster) and writes
docs/performance/sampling_vs_diffusers_<backend>_<device>.json.
"""

import argparse
import contextlib
import json
import time

import numpy as np

import peer


def ours_stage(precision, steps, batch):
    from keras_cdm import DiffusionModel, GaussianDiffusion

    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    model = DiffusionModel(peer.ours_unet(dtype=policy), GaussianDiffusion(1000, "linear"))
    labels = np.arange(batch) % 10

    def run():
        return model.generate(labels=labels, num_steps=steps, seed=0, verbose=False)

    return run


def diffusers_loop(unets, steps, batch, device, precision, sizes, channels=3):
    """A cascade (one stage or more) sampled the diffusers way, one scheduler per stage."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    schedulers = []
    for n in steps:
        scheduler = DDPMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(n, device=device)
        schedulers.append(scheduler)
    labels = (torch.arange(batch) % 10).to(device)
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bfloat16"
            else contextlib.nullcontext())

    def run():
        generator = torch.Generator(device=device).manual_seed(0)
        low = None
        with torch.inference_mode(), cast:
            for unet, scheduler, size in zip(unets, schedulers, sizes):
                x = torch.randn(batch, channels, size, size, generator=generator, device=device)
                cond = None if low is None else F.interpolate(low, size=(size, size), mode="bicubic")
                for t in scheduler.timesteps:
                    inp = x if cond is None else torch.cat([x, cond], dim=1)
                    out = unet(inp, t, class_labels=labels).sample[:, :channels].float()
                    x = scheduler.step(out, t, x, generator=generator).prev_sample
                low = x.clamp(-1, 1)
        peer.sync(device)
        return low

    return run


def first_and_steady(run, repeats):
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    return first, peer.timed(run, repeats)


def stage_part(args, device):
    rows, out = [], {}
    for precision in args.precisions:
        ours = ours_stage(precision, args.steps, args.batch)
        unet = peer.diffusers_unet().to(device).eval()
        theirs = diffusers_loop([unet], [args.steps], args.batch, device, precision, [32])
        ours_first, ours_times = first_and_steady(ours, 1)
        theirs_first, theirs_times = first_and_steady(theirs, 1)
        for _ in range(args.repeats - 1):  # alternate
            ours_times += peer.timed(ours, 1)
            theirs_times += peer.timed(theirs, 1)
        r = out[precision] = {
            "keras_cdm first call (s)": ours_first, "keras_cdm steady (s)": peer.median(ours_times),
            "diffusers first call (s)": theirs_first, "diffusers steady (s)": peer.median(theirs_times)}
        r["speed-up (diffusers s / keras_cdm s)"] = r["diffusers steady (s)"] / r["keras_cdm steady (s)"]
        rows.append({"precision": precision, **r})
        print(precision, json.dumps(r))
    peer.print_table(f"one stage: {args.steps} ancestral steps, batch {args.batch}, 32x32, ~9.6 M parameters",
                     rows, list(rows[0]))
    return out


def diffusers_like(unet):
    """A diffusers UNet2DModel with the widths, depths and attention of one of our U-Nets."""
    levels = len(unet.channel_multipliers)
    sizes = [unet.image_size // 2**i for i in range(levels)]
    channels = unet.image_channels
    return peer.diffusers_unet(
        in_channels=channels * (2 if unet.low_res_size else 1),
        out_channels=channels * (2 if unet.learned_variance else 1),
        sample_size=unet.image_size,
        block_out_channels=tuple(unet.base_channels * m for m in unet.channel_multipliers),
        attention_levels=tuple(i for i, s in enumerate(sizes) if s in unet.attention_resolutions),
        heads_dim=unet.base_channels * unet.channel_multipliers[-1] // unet.num_heads,
        num_class_embeds=unet.num_classes, norm_num_groups=unet.num_groups,
        layers_per_block=unet.num_res_blocks)


def cascade_part(args, device):
    from keras_cdm import CascadedDiffusionPipeline

    pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
    steps = [plan.num_network_evaluations for plan in pipeline.plans]
    labels = np.arange(args.batch) % 10

    def ours():
        pipeline.generate(labels=labels, seed=0, batch_size=args.batch, verbose=False)

    unets = [diffusers_like(stage.unet).to(device).eval() for stage in pipeline.stages]
    sizes = [stage.unet.image_size for stage in pipeline.stages]
    theirs = diffusers_loop(unets, steps, args.batch, device, "float32", sizes,
                            channels=pipeline.stages[0].unet.image_channels)
    ours_first = peer.timed(ours, 1)[0]
    first_stages = dict(pipeline.last_timings)
    theirs_first = peer.timed(theirs, 1)[0]
    ours_times, theirs_times = [], []
    for _ in range(args.repeats):  # alternate
        ours_times += peer.timed(ours, 1)
        theirs_times += peer.timed(theirs, 1)
    steady_stages = dict(pipeline.last_timings)
    r = {"stages": pipeline.stage_names, "steps": steps,
         "parameters keras_cdm": [s.unet.count_params() for s in pipeline.stages],
         "parameters diffusers": [sum(p.numel() for p in u.parameters()) for u in unets],
         "keras_cdm first call (s)": ours_first, "keras_cdm first call per stage (s)": first_stages,
         "keras_cdm steady (s)": peer.median(ours_times), "keras_cdm steady per stage (s)": steady_stages,
         "keras_cdm compilation (first - steady, s)": ours_first - peer.median(ours_times),
         "diffusers first call (s)": theirs_first, "diffusers steady (s)": peer.median(theirs_times)}
    r["speed-up (diffusers s / keras_cdm s)"] = r["diffusers steady (s)"] / r["keras_cdm steady (s)"]
    print("cascade", json.dumps(r))
    peer.print_table(f"cdm_mnist32 cascade end to end, batch {args.batch}, float32, steps {steps}",
                     [{k: v for k, v in r.items() if not isinstance(v, (dict, list))}],
                     [k for k, v in r.items() if not isinstance(v, (dict, list))])
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--parts", nargs="+", default=["stage", "cascade"], choices=["stage", "cascade"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    import keras

    peer.configure_threads()
    device = peer.torch_device(args.device)
    results = {"machine": peer.machine(), "torch device": str(device), "batch": args.batch, "steps": args.steps}
    if "cascade" in args.parts:  # first: its first call is then a cold start of the process
        results["cascade"] = cascade_part(args, device)
    if "stage" in args.parts:
        results["stage"] = stage_part(args, device)
    peer.write_results(f"sampling_vs_diffusers_{keras.backend.backend()}_{device.type}", results)


if __name__ == "__main__":
    main()
