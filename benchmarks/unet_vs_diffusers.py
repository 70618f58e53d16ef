"""U-Net training step and forward pass: keras_cdm vs diffusers, same machine, same run.

Run from the repository root (needs `pip install torch diffusers`):
    KERAS_BACKEND=tensorflow python benchmarks/unet_vs_diffusers.py
    KERAS_BACKEND=jax python benchmarks/unet_vs_diffusers.py          # on a GPU: JAX vs PyTorch CUDA
Options: --batch 32, --steps 6 (steps per timed round), --rounds 3, --precisions float32 bfloat16,
--parts train forward memory, --torch-layouts contiguous channels_last (the peer is measured in
each and its best is compared), --device auto|cpu|cuda (PyTorch's side).

Measures, for each precision (`mixed_bfloat16` policy on our side, `torch.autocast` on theirs):
- training: images/s of `DiffusionModel.fit` (flips, noising, MSE, Adam, EMA) against the same
  step written the usual diffusers way (`UNet2DModel`, `DDPMScheduler.add_noise`, AdamW,
  `EMAModel`); rounds of `--steps` steps alternate between the libraries and the median
  seconds per step of the rounds after a warm-up round are compared;
- forward pass: images/s of the compiled inference call (what sampling runs) against
  `UNet2DModel` under `torch.inference_mode`;
- achieved FLOP/s of both, with FLOPs counted by `torch.utils.flop_counter` on the peer (the
  architectures match to 0.003 % of parameters), against the machine's matrix-multiply peak
  measured in the same run (numpy / TensorFlow or JAX / PyTorch, float32 and bfloat16);
- peak resident memory of a training run, each library alone in a fresh subprocess.
Prints tables and ratios (ours / diffusers; > 1 means we are faster) and writes
docs/performance/unet_vs_diffusers_<backend>_<device>.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import peer

PRECISIONS = {"float32": ("float32", None), "bfloat16": ("mixed_bfloat16", "bfloat16")}


# -- the machine's matrix-multiply peak ------------------------------------------------


def matmul_peak(device, n=None, repeats=10):
    """GFLOP/s of an n x n x n product per library and precision (median of `repeats`);
    n = 2048 on a CPU, 8192 on a GPU."""
    import keras
    import torch

    n = n or (2048 if device.type == "cpu" else 8192)
    flops = 2 * n**3
    out = {}
    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    if device.type == "cpu":
        out["numpy float32"] = flops / peer.median(peer.timed(lambda: a @ a, repeats)) / 1e9
    for precision in ("float32", "bfloat16"):
        t = peer.median(peer.keras_matmul_seconds(precision, n, repeats))
        out[f"{keras.backend.backend()} {precision}"] = flops / t / 1e9
        y = torch.from_numpy(a).to(device=device, dtype=getattr(torch, precision))
        (y @ y).sum().item()
        t = peer.median(peer.timed(lambda: y @ y, repeats, after=lambda: peer.sync(device)))
        out[f"torch {precision}"] = flops / t / 1e9
    return out


def _compiled(fn):
    from keras_cdm._compile import compile_function

    return compile_function(fn)


# -- keras_cdm -------------------------------------------------------------------------


class _EpochTimer:
    """Seconds per step of each `fit` epoch (epoch end syncs the device: logs become floats)."""

    def __new__(cls, steps):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.per_step = []

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.per_step.append((time.perf_counter() - self.start) / steps)

        return Timer()


class Ours:
    name = "keras_cdm"

    def __init__(self, precision, batch, steps):
        import keras

        from keras_cdm import DiffusionModel, GaussianDiffusion

        policy = PRECISIONS[precision][0]
        keras.utils.set_random_seed(0)
        self.unet = peer.ours_unet(dtype=policy)
        self.model = DiffusionModel(self.unet, GaussianDiffusion(1000, "linear"), random_flip=True, seed=0)
        self.model.compile()
        self.model.optimizer.build(self.model.trainable_variables)
        rng = np.random.default_rng(0)
        self.data = {"images": rng.uniform(-1, 1, (batch * steps, 32, 32, 3)).astype("float32"),
                     "labels": rng.integers(0, 10, batch * steps).astype("int32")}
        self.batch, self.steps = batch, steps
        x = keras.ops.convert_to_tensor(self.data["images"][:batch])
        t = keras.ops.convert_to_tensor(rng.integers(0, 1000, batch).astype("int32"))
        y = keras.ops.convert_to_tensor(self.data["labels"][:batch])
        forward = _compiled(lambda x, t, y: self.unet({"noisy_images": x, "timesteps": t, "labels": y},
                                                      training=False))
        self.forward = lambda: keras.ops.convert_to_numpy(forward(x, t, y)[:1, :1, :1, :1])

    def train_round(self):
        timer = _EpochTimer(self.steps)
        self.model.fit(self.data, batch_size=self.batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
        return timer.per_step[0]

    def forward_time(self, repeats):
        return peer.median(peer.timed(self.forward, repeats))

    def parameters(self):
        return self.unet.count_params()


# -- diffusers -------------------------------------------------------------------------


class Diffusers:
    name = "diffusers"

    def __init__(self, precision, batch, steps, device, layout):
        import torch
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        self.device, self.batch, self.steps = device, batch, steps
        self.format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.autocast = PRECISIONS[precision][1]
        self.unet = peer.diffusers_unet().to(device, memory_format=self.format)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self.optimizer = torch.optim.Adam(self.unet.parameters(), lr=1e-4)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999)
        g = torch.Generator().manual_seed(0)
        self.images = (torch.rand(batch * steps, 3, 32, 32, generator=g) * 2 - 1).to(device)
        self.labels = torch.randint(0, 10, (batch * steps,), generator=g).to(device)

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.autocast))

    def train_step(self, x, y):
        import torch
        import torch.nn.functional as F

        self.unet.train()
        b = x.shape[0]
        flip = torch.rand(b, device=self.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x).contiguous(memory_format=self.format)
        t = torch.randint(0, 1000, (b,), device=self.device)
        noise = torch.randn_like(x)
        noisy = self.scheduler.add_noise(x, noise, t)
        with self._autocast():
            prediction = self.unet(noisy, t, class_labels=y).sample
        loss = F.mse_loss(prediction.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.step(self.unet.parameters())
        return loss

    def train_round(self):
        start = time.perf_counter()
        for i in range(self.steps):
            sl = slice(i * self.batch, (i + 1) * self.batch)
            loss = self.train_step(self.images[sl], self.labels[sl])
        loss.item()
        return (time.perf_counter() - start) / self.steps

    def forward_time(self, repeats):
        import torch

        self.unet.eval()
        x = self.images[: self.batch].contiguous(memory_format=self.format)
        t = torch.randint(0, 1000, (self.batch,), device=self.device)
        y = self.labels[: self.batch]

        def call():
            with torch.inference_mode(), self._autocast():
                return self.unet(x, t, class_labels=y).sample

        call()
        return peer.median(peer.timed(call, repeats, after=lambda: peer.sync(self.device)))

    def parameters(self):
        return sum(p.numel() for p in self.unet.parameters())

    def flops(self):
        """Forward and training-step FLOPs per image (convolutions, matmuls, attention)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        self.unet.train()
        x, y = self.images[: self.batch], self.labels[: self.batch]
        t = torch.randint(0, 1000, (self.batch,), device=self.device)
        with FlopCounterMode(display=False) as counter:
            self.unet(x, t, class_labels=y).sample.sum().backward()
        total = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.unet(x, t, class_labels=y)
        forward = counter.get_total_flops()
        self.optimizer.zero_grad(set_to_none=True)
        return {"forward": forward / self.batch, "train": total / self.batch}


# -- measurement -----------------------------------------------------------------------


def compare(precision, args, device):
    import torch

    ours = Ours(precision, args.batch, args.steps)
    peers = {layout: Diffusers(precision, args.batch, args.steps, device, layout) for layout in args.torch_layouts}
    result = {"parameters": {"keras_cdm": ours.parameters(), "diffusers": next(iter(peers.values())).parameters()}}
    if "train" in args.parts:
        start = time.perf_counter()
        ours.train_round()  # warm-up (tracing, optimizer variables)
        result["keras_cdm first round (s, with tracing)"] = time.perf_counter() - start
        for p in peers.values():
            p.train_round()
        ours_times, peer_times = [], {layout: [] for layout in peers}
        for _ in range(args.rounds):  # alternating
            ours_times.append(ours.train_round())
            for layout, p in peers.items():
                peer_times[layout].append(p.train_round())
        result["train"] = _rates(args.batch, ours_times, peer_times)
    if "forward" in args.parts:
        ours_times, peer_times = [], {layout: [] for layout in peers}
        ours.forward()
        for _ in range(args.rounds):
            ours_times.append(ours.forward_time(args.steps))
            for layout, p in peers.items():
                peer_times[layout].append(p.forward_time(args.steps))
        result["forward"] = _rates(args.batch, ours_times, peer_times)
    del ours, peers
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return result


def _rates(batch, ours_times, peer_times):
    rates = {"keras_cdm images/s": batch / peer.median(ours_times)}
    for layout, times in peer_times.items():
        rates[f"diffusers ({layout}) images/s"] = batch / peer.median(times)
    best = max(v for k, v in rates.items() if k.startswith("diffusers"))
    rates["diffusers best images/s"] = best
    rates["ratio keras_cdm / diffusers best"] = rates["keras_cdm images/s"] / best
    return rates


def memory(args):
    """Peak RSS of a short training run, each library alone in a fresh process."""
    out = {}
    for library in ("keras_cdm", "diffusers"):
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--memory-child", library, "--precisions", precision,
                   "--batch", str(args.batch), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                raise RuntimeError(f"memory child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
            out[f"{library} {precision}"] = json.loads(lines[-1])
    return out


def memory_child(library, precision, batch, device_name):
    """Imports only `library`'s framework, then trains a few steps; prints RSS (and GPU) peaks."""
    steps = 3
    if library == "keras_cdm":
        import keras

        import keras_cdm  # noqa: F401

        baseline = peer.peak_rss_mib()
        runner = Ours(precision, batch, steps)
    else:
        import diffusers  # noqa: F401
        import torch

        peer.configure_threads()
        baseline = peer.peak_rss_mib()
        device = peer.torch_device(device_name)
        runner = Diffusers(precision, batch, steps, device, "channels_last")
    built = peer.peak_rss_mib()
    runner.train_round()
    runner.train_round()
    result = {"after import (MiB)": baseline, "after build (MiB)": built, "peak (MiB)": peer.peak_rss_mib()}
    result["training (peak - after import, MiB)"] = result["peak (MiB)"] - baseline
    if library == "diffusers" and device.type == "cuda":
        result["gpu peak (MiB)"] = torch.cuda.max_memory_allocated() / 2**20
    if library == "keras_cdm" and keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats and jax.devices()[0].platform == "gpu":
            result["gpu peak (MiB)"] = stats["peak_bytes_in_use"] / 2**20
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=list(PRECISIONS))
    parser.add_argument("--parts", nargs="+", default=["train", "forward", "memory"],
                        choices=["train", "forward", "memory"])
    parser.add_argument("--torch-layouts", nargs="+", default=["contiguous", "channels_last"],
                        choices=["contiguous", "channels_last"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--memory-child", choices=["keras_cdm", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.precisions[0], args.batch, args.device)
    import keras

    peer.configure_threads()
    device = peer.torch_device(args.device)

    results = {"machine": peer.machine(), "torch device": str(device), "batch": args.batch,
               "steps per round": args.steps, "rounds": args.rounds}
    results["matmul peak GFLOP/s"] = matmul_peak(device)
    print("matrix-multiply peak (GFLOP/s):", json.dumps({k: round(v, 1) for k, v in results["matmul peak GFLOP/s"].items()}))
    flops = Diffusers("float32", args.batch, 1, device, "contiguous").flops()
    results["GFLOP per image"] = {k: v / 1e9 for k, v in flops.items()}
    print("GFLOP per image:", json.dumps({k: round(v / 1e9, 3) for k, v in flops.items()}))
    rows = []
    for precision in args.precisions:
        r = results[precision] = compare(precision, args, device)
        peak = max(v for k, v in results["matmul peak GFLOP/s"].items() if k.endswith(precision))
        for part, key in (("train", "train"), ("forward", "forward")):
            if part not in r:
                continue
            rate = r[part]
            for lib, images in (("keras_cdm", rate["keras_cdm images/s"]), ("diffusers", rate["diffusers best images/s"])):
                gflops = images * flops[key] / 1e9
                rate[f"{lib} GFLOP/s"] = gflops
                rate[f"{lib} % of matmul peak"] = 100 * gflops / peak
            rows.append({"part": part, "precision": precision, "keras_cdm img/s": rate["keras_cdm images/s"],
                         **{f"diffusers {k.split('(')[1].split(')')[0]} img/s": v for k, v in rate.items()
                            if k.startswith("diffusers (")},
                         "ratio": rate["ratio keras_cdm / diffusers best"],
                         "ours % peak": rate["keras_cdm % of matmul peak"],
                         "theirs % peak": rate["diffusers % of matmul peak"]})
        print(precision, json.dumps(r))
    for part in ("train", "forward"):
        if all(part in results[p] for p in ("float32", "bfloat16") if p in results):
            if "float32" in results and "bfloat16" in results:
                results[f"{part} keras_cdm bfloat16 / float32"] = (
                    results["bfloat16"][part]["keras_cdm images/s"] / results["float32"][part]["keras_cdm images/s"])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    peer.print_table(f"images/s, batch {args.batch} (ratio = keras_cdm / best diffusers layout; > 1: we are faster)",
                     rows, columns)
    for part in ("train", "forward"):
        key = f"{part} keras_cdm bfloat16 / float32"
        if key in results:
            print(f"{key}: {results[key]:.2f}x")
    if "memory" in args.parts:
        results["peak memory"] = memory(args)
        peer.print_table("peak resident memory of a training run (MiB)",
                         [{"run": k, **v} for k, v in results["peak memory"].items()],
                         ["run", "after import (MiB)", "peak (MiB)", "training (peak - after import, MiB)", "gpu peak (MiB)"])
    peer.write_results(f"unet_vs_diffusers_{keras.backend.backend()}_{device.type}", results)


if __name__ == "__main__":
    main()
