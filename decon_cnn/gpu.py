"""What a run's GPU is doing, for the metrics rows and the result.

- ``gpu/util_pct``: the device's utilisation from NVML (``torch.cuda.utilization``, which needs
  ``pynvml``/``nvidia-ml-py``), else from ``nvidia-smi``, else left out;
- ``gpu/memory_mb``: memory this process holds on the device (the caching allocator's reserve,
  what ``nvidia-smi`` shows for the process);
- ``gpu/peak_memory_mb``: the most memory tensors took at once so far (``max_memory_allocated``).

On the CPU there are no ``gpu/*`` keys at all. Every probe is best effort: a failing one is
dropped for the rest of the run, never an error.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import torch

MB = 2**20
_broken: set[str] = set()


def _nvidia_smi_utilization(device: torch.device) -> float | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        _broken.add("nvidia-smi")
        return None
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    query = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    try:
        out = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", query],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        _broken.add("nvidia-smi")
        return None


def utilization(device: torch.device) -> float | None:
    """The device's utilisation in percent over the driver's last sample period, or None."""
    if "nvml" not in _broken:
        try:
            return float(torch.cuda.utilization(device))
        except Exception:  # noqa: BLE001 - pynvml missing, or NVML unusable here (e.g. MIG)
            _broken.add("nvml")
    if "nvidia-smi" not in _broken:
        return _nvidia_smi_utilization(device)
    return None


def gpu_stats(device: torch.device | None) -> dict[str, float]:
    """``gpu/*`` values of ``device``; empty unless it is a CUDA device."""
    if device is None or device.type != "cuda":
        return {}
    out = {"gpu/memory_mb": torch.cuda.memory_reserved(device) / MB,
           "gpu/peak_memory_mb": torch.cuda.max_memory_allocated(device) / MB}
    util = utilization(device)
    if util is not None:
        out["gpu/util_pct"] = util
    return out


def software() -> dict[str, Any]:
    """torch, CUDA runtime and cuDNN versions and the visible GPUs' names (for a run's events)."""
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
