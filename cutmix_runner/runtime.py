"""Where and how a run computes: device, precision, threads, allocator, seeds and RNG state,
and the library versions a summary records.

Under torchrun, the rank and world size (distributed.World) too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision

from cutmix_runner import __version__, distributed
from cutmix_runner.config import TrainerConfig
from cutmix_runner.errors import RunError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # training forward: "bf16" (autocast) or "fp32"
    eval_precision: str = ""  # evaluation passes; "" = as training
    frozen_precision: str = ""  # the frozen modules' forward while training; "" = as training
    world: distributed.World = distributed.ONE_PROCESS  # this process's rank among torchrun's

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training forward pass's precision context; a no-op in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def forward_only_precisions(self) -> dict[str, str]:
        return {"eval_precision": self.eval_precision or self.precision,
                "frozen_precision": self.frozen_precision or self.precision}

    def eval_autocast(self) -> contextlib.AbstractContextManager:
        """The evaluation passes' precision context; a no-op in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=(self.eval_precision or self.precision) == "bf16")

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine()


def setup(cfg: TrainerConfig) -> Runtime:
    """Apply the process-wide settings (threads, allocator, seeds) and resolve device/precision."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    seed_everything(cfg.seed)
    world = distributed.current()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.parallel:
        device = torch.device("cuda", world.local_rank)  # one GPU per rank
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    precision = resolve_precision(cfg.precision, device)
    return Runtime(device, precision,
                   resolve_forward_precision(cfg.eval_precision, precision, device),
                   resolve_forward_precision(cfg.frozen_precision, precision, device), world)


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """auto, cpu, cuda or cuda:N as a device that exists here; the one device check of every
    tool (`key` is the option that named it). auto: CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    said = f"{key} {name}" if key.startswith("--") else f"{key}={name}"  # a flag, or a key
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"{said}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"{said}: only cpu and cuda are supported")
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise RunError(f"{said}: there is no such CUDA device here; use cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 autocast on CUDA; fp32 on CPU, where only some CPUs have native bf16."""
    use_bf16 = name == "bf16" or (name == "auto" and device.type == "cuda")
    return "bf16" if use_bf16 else "fp32"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_isa() -> str:
    """The CPU's widest vector extension: amx, avx512, avx2 or other. Float kernels round
    differently on each, so every summary says which one produced it."""
    flags = cpu_flags()
    for isa, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return isa
    return "other"


def explicit_padding_pays(device: torch.device) -> bool:
    """Whether padding depthwise convs before convolving speeds up training on `device`.

    Measured with `make bench`: on an AVX2-only CPU oneDNN's depthwise weight gradient with
    built-in padding takes a slow path, and padding first trained 1.3-1.8x faster; on an AVX-512
    Xeon (AMX) the extra copy made training 0.86-0.88x as fast. On CUDA it is only an extra copy.
    """
    return device.type == "cpu" and "avx512f" not in cpu_flags()


def native_bf16(device: torch.device) -> bool:
    """CUDA, or a CPU with bf16 instructions (AMX or AVX512-BF16). On the AMX Xeon bf16 eval
    ran 1.76x as fast as fp32; on an AVX2-only CPU, emulated, it ran at 0.08x (`make bench`)."""
    return device.type == "cuda" or bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_forward_precision(name: str, precision: str, device: torch.device) -> str:
    """For forward-only work (evaluation, frozen modules). auto: bf16 where the device computes
    it natively, else the training precision. Training on CPU stays fp32 whatever the CPU: its
    bf16 backward ran slower even with AMX."""
    if name == "auto":
        return "bf16" if precision == "bf16" or native_bf16(device) else "fp32"
    return name


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS.

    Each training step frees and re-allocates the same large activation buffers; by default glibc
    unmaps them and the next step page-faults them back in, which showed up as a large share of
    system time in CPU runs here. Returns False where this is not glibc.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum
        ok &= libc.mallopt(m_trim_threshold, 2**31 - 1)
        ok &= libc.mallopt(m_top_pad, 256 * 2**20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's and CUDA's global generators, for an exact resume, in types a
    checkpoint loads without running code (tensors, numbers, strings, tuples, dicts)."""
    kind, key, position, has_gauss, gauss = np.random.get_state()
    numpy = {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": position,
             "has_gauss": has_gauss, "gauss": gauss}
    return {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):  # else NumPy's own tuple, as checkpoints before 2026-12-07 kept it
        numpy = (numpy["kind"], numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                 numpy["has_gauss"], numpy["gauss"])
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict[str, str]:
    return {"cutmix_runner": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__}
