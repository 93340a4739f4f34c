"""How much memory this process may still take, and whether a planned piece of work fits in it.

A run that needs more than is free is refused before it starts, with the estimate and what is
free, instead of being killed by the kernel or a memory cap half way (exit 2, README "Exit codes").
"""
from __future__ import annotations

import os
import resource
from typing import Optional

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.limits import describe_bytes

USABLE_FRACTION = 0.8  # leave room for what the estimate does not count (interpreter, libraries)


def available_bytes() -> Optional[int]:
    """The least of: the system's available memory, the room left under this process's cgroup
    limit and under its address-space limit. None when none of them can be read."""
    candidates = [_meminfo_available(), _cgroup_room(), _address_space_room()]
    known = [c for c in candidates if c is not None]
    return max(min(known), 0) if known else None


def check_fits(needed: int, what: str, advice: str) -> None:
    """BadInputError when ``needed`` bytes do not fit in the usable part of the free memory."""
    free = available_bytes()
    if free is None or needed <= USABLE_FRACTION * free:
        return
    raise BadInputError(f"{what} needs about {describe_bytes(needed)} of memory but {describe_bytes(free)} is free; "
                        f"{advice}")


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> Optional[int]:
    pairs = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    for limit_file, usage_file in pairs:
        try:
            with open(limit_file) as handle:
                limit = handle.read().strip()
            with open(usage_file) as handle:
                usage = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return int(limit) - usage
    return None


def _address_space_room() -> Optional[int]:
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


EXPLAIN_COPIES = 4  # arrays of the spikes' size the per-layer mismatch explanation builds (nir, lava)
CHUNK_BUDGET = 512 << 20  # at most this much memory per chunk, and at most a quarter of what is free
INPUT_COPIES = 4  # the chunk as read, as the source ANN and the spiking model each get it, and the padding
MAX_CHUNK_SAMPLES = 1024


def spiking_bytes_per_sample(sample_values: int, spike_values: int, timesteps: list[int], backends: int,
                             explained: bool) -> int:
    """Memory ``--verify`` holds per sample of a chunk at the largest T (float32 throughout): the
    spikes of ``backends`` spiking backends, one more copy of them while ONNX Runtime hands them
    over, the mismatch explanation's arrays (``explained``), and the input's copies."""
    copies = backends + 1 + (EXPLAIN_COPIES if explained else 0)
    return 4 * (spike_values * max(timesteps) * copies + INPUT_COPIES * sample_values)


def chunk_samples(per_sample: int, free: Optional[int] = None) -> int:
    """Samples per chunk: as many as fit the chunk budget, at least 1, at most MAX_CHUNK_SAMPLES."""
    free = available_bytes() if free is None else free
    budget = CHUNK_BUDGET if free is None else min(CHUNK_BUDGET, free // 4)
    return int(max(1, min(MAX_CHUNK_SAMPLES, budget // max(1, per_sample))))
