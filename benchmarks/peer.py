"""The peer of the performance benchmarks: Hugging Face diffusers on PyTorch, with our matched U-Net.

Shared by `unet_vs_diffusers.py` and `sampling_vs_diffusers.py`. Needs `pip install torch
diffusers` (not a dependency of keras_cdm; the CPU build of torch is enough on a CPU).
Both U-Nets are the 32x32 class-conditional architecture of the performance issue: base
channels 64, multipliers 1,2,2,2, 2 residual blocks per level (3 on the way up), attention
at 16x16 (4 heads of 32 channels) and in the middle block, scale-shift conditioning,
dropout 0.1, 10 classes: about 9.6 M parameters on each side.
"""

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "performance"

MATCHED = dict(image_size=32, base_channels=64, channel_multipliers=(1, 2, 2, 2), num_res_blocks=2,
               attention_resolutions=(16,), num_heads=4, dropout=0.1, num_classes=10)


def ours_unet(dtype=None, **overrides):
    from keras_cdm import DiffusionUNet

    return DiffusionUNet(**{**MATCHED, **overrides}, dtype=dtype)


def diffusers_unet(in_channels=3, out_channels=3, sample_size=32, block_out_channels=(64, 128, 128, 128),
                   attention_levels=(1,), heads_dim=32, num_class_embeds=10, norm_num_groups=32,
                   layers_per_block=2):
    """diffusers' `UNet2DModel` with the structure of `ours_unet`.

    `attention_levels` are the indices of the levels with attention after each residual
    block (level 1 = 16x16 for a 32x32 image); the middle block always has attention.
    """
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if levels - 1 - i in attention_levels else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
        layers_per_block=layers_per_block,
        block_out_channels=block_out_channels, down_block_types=down, up_block_types=up,
        resnet_time_scale_shift="scale_shift", dropout=0.1, num_class_embeds=num_class_embeds,
        attention_head_dim=heads_dim, norm_num_groups=norm_num_groups,
    )


def torch_device(name="auto"):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def configure_threads():
    """Both libraries on every core of the machine (TensorFlow and oneDNN do so by default)."""
    import torch

    torch.set_num_threads(os.cpu_count())


def median(values):
    return float(statistics.median(values))


def timed(fn, repeats, after=lambda: None):
    """Wall seconds of `repeats` calls of `fn`, each followed by `after()` (a device sync)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        after()
        times.append(time.perf_counter() - start)
    return times


def keras_matmul_seconds(precision, n, repeats):
    """Wall seconds of `repeats` compiled n x n x n products with the Keras backend
    (after a warm-up), each read back to the host: what the matmul peak is measured from."""
    import keras

    from keras_cdm._compile import compile_function

    x = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((n, n)).astype("float32"), precision)
    fn = compile_function(lambda m: keras.ops.matmul(m, m))
    call = lambda: keras.ops.convert_to_numpy(fn(x)[:1, :1])  # noqa: E731
    for _ in range(3):
        call()
    return timed(call, repeats)


def peak_rss_mib():
    """This process's peak resident memory: VmHWM, which (unlike `ru_maxrss`) starts afresh
    at exec and so does not inherit the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine():
    import keras
    import torch

    info = {"platform": platform.platform(), "processor": _cpu_name(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "keras": keras.__version__,
            "keras_backend": keras.backend.backend(), "torch": torch.__version__}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    elif backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [str(d) for d in jax.devices()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(name, results):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {path.relative_to(ROOT)}")


def print_table(title, rows, columns):
    """Prints `rows` (dicts) as a fixed-width table with the given column keys."""
    print(f"\n{title}")
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)
