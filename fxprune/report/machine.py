"""What a measurement ran on: the facts every result file records beside its figures.

Example:
    >>> sorted(machine())[:3]
    ['cores', 'cpu', 'date']
"""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> dict:
    """CPU, cores, threads, load, operating system and library versions, and the date."""
    import torchvision

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None, "date": time.strftime("%Y-%m-%d %H:%M")}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
