"""The node's GPUs, probed without torch: for a worker's ``<worker_id>.env.json``.

NVML through ``pynvml`` (the ``nvidia-ml-py`` package) when it is installed, else
``nvidia-smi``, else nothing (a CPU-only node). What the job itself runs with (torch's CUDA
runtime, cuDNN) needs torch and is recorded by the trainer in the run's events instead
(decon_cnn: the ``train_start`` event).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_QUERY = "index,name,uuid,driver_version,memory.total"


def _from_nvml() -> dict[str, Any] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: not a GPU node, as far as NVML can tell
        return None
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                         "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                         "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20})
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"gpus": gpus, "gpu_driver": driver.decode() if isinstance(driver, bytes) else driver,
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}", "gpu_probe": "nvml"}
    except Exception:  # noqa: BLE001 - a partial answer is worse than asking nvidia-smi
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _from_nvidia_smi(timeout: float) -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        listing = subprocess.run([exe, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=timeout, check=True).stdout
        banner = subprocess.run([exe], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus, driver = [], None
    for line in listing.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            continue
        index, name, uuid, driver, memory = fields
        try:
            gpus.append({"index": int(index), "name": name, "uuid": uuid, "memory_mb": int(float(memory))})
        except ValueError:
            continue
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return {"gpus": gpus, "gpu_driver": driver, "cuda_driver": cuda.group(1) if cuda else None,
            "gpu_probe": "nvidia-smi"}


def gpu_inventory(timeout: float = 10.0) -> dict[str, Any]:
    """``gpus`` (index, name, uuid, memory_mb of every GPU of the node, before
    CUDA_VISIBLE_DEVICES), ``gpu_driver``, ``cuda_driver`` (the newest CUDA the driver supports)
    and which probe answered; empty on a node without NVIDIA GPUs."""
    return _from_nvml() or _from_nvidia_smi(timeout) or {}
