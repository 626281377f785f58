"""GPU placement and memory limits, set through the environment before any backend loads.

Environment variables rather than framework calls keep this backend-agnostic: TensorFlow,
JAX and PyTorch each read their own before they touch the GPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess


def configure_gpu() -> str:
    """Pins this process to one GPU and stops it preallocating memory; returns the device name.

    ``KILOTUNE_GPU`` pins an index; otherwise the GPU with the least memory in use is taken,
    so workers started one after another spread over a multi-GPU host.
    """
    # Grow memory on demand so several workers can share one GPU.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    pinned = os.environ.get("KILOTUNE_GPU")
    if pinned is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = pinned
        return f"gpu:{pinned}"
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        visible = os.environ["CUDA_VISIBLE_DEVICES"]
        return f"gpu:{visible}" if visible not in ("", "-1") else "cpu"
    usage = gpu_memory_used()
    if not usage:
        return "cpu"
    # Ties (all idle at start-up) break by host name, so replicas started together spread out.
    spread = int(hashlib.sha256(socket.gethostname().encode()).hexdigest(), 16)
    index = min(usage, key=lambda i: (usage[i], (i + spread) % len(usage)))
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    return f"gpu:{index}"


def gpu_memory_used() -> dict[int, int]:
    """MiB in use per GPU index, from nvidia-smi; empty where there is no NVIDIA GPU."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(i): int(m) for i, m in (line.split(",") for line in out.strip().splitlines() if "," in line)}


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory", "OOM when allocating"))
