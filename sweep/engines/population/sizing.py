"""How many runs one program trains at once (K), and how many programs run side by side.

A run's footprint is estimated from the example's size (`bytes_per_run`: weights, gradient
and optimizer slots with their updated copies, the step's activations, its batch order). On a
CPU worker K is at most `CPU_MAX_K`, past which the population's weights and slots no longer
stay in cache and each run costs more; several populations run at once, one per TensorFlow
CPU thread (`concurrent_populations`), together within `CPU_MEMORY_FRACTION` of the memory
available to the process (MemAvailable, bounded by the cgroup limit). Where memory is not the
limit, a run's time per epoch no longer falls past K = 32-48 for any model kind measured (the
catalog MLP, a CNN, a SimpleRNN: within 1.00-1.04x of the best K at 48, gaining at most 4 % at 96;
`python scripts/bench_population_size.py`), so the cap is one number. On a GPU worker K is
at most `GPU_MAX_K` and one population runs at a time, within `GPU_MEMORY_FRACTION` of the GPU
memory TensorFlow may still allocate. A group larger than K is cut into the fewest
populations of at most K runs, all of one size, so that XLA compiles once per group::

    >>> size, parts = populations(list(range(132)), 48)
    >>> size, [len(p) for p in parts]
    (44, [44, 44, 44])
"""

from __future__ import annotations

import os

import numpy as np

from .model import Architecture, Graph
from .step import SLOTS

CPU_MAX_K = 48
GPU_MAX_K = 8192
CPU_MEMORY_FRACTION = 0.25
GPU_MEMORY_FRACTION = 0.5


def available_host_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, bounded by a cgroup limit if any."""
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                limit = fh.read().strip()
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            headroom = int(limit) - usage
            available = headroom if available is None else min(available, headroom)
    return available if available is not None else 2 << 30


def gpu_free_memory() -> int | None:
    """Bytes TensorFlow may still allocate on the first GPU (the device's memory limit minus
    `tf.config.experimental.get_memory_info`'s current use), or None on a CPU worker."""
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    from tensorflow.python.client import device_lib

    limit = next(d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU")
    used = tf.config.experimental.get_memory_info("GPU:0")["current"]
    return max(limit - used, 0)


def concurrent_populations() -> int:
    """Populations trained at once: one per TensorFlow CPU thread (XLA runs much of a small
    program on one thread), one on a GPU."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return 1
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return max(1, threads or len(os.sched_getaffinity(0)))


def bytes_per_run(arch: Architecture | Graph, batch_size: int, n: int, optimizer: str, activations: int = 1) -> int:
    """A generous estimate of one run's share of a program's memory, in bytes (float32).

    Weights, gradient and slots with the update's new copies and temporaries (8 + 2 x slots
    copies of the weights), the step's activations and their gradients (4 copies of every
    layer's output per activation the program computes, and of the gathered batch), and its
    batch order (int32)."""
    inputs = int(np.prod(arch.input_shape))
    widths = inputs + activations * (arch.widths - inputs)
    floats = (8 + 2 * len(SLOTS[optimizer])) * arch.n_params + 4 * batch_size * widths + n
    return 4 * floats


def population_size(arch: Architecture | Graph, batch_size: int, n: int, optimizer: str,
                    max_k: int | None = None, activations: int = 1) -> int:
    """K on this worker: the device's useful maximum, bounded by its free memory."""
    per_run = bytes_per_run(arch, batch_size, n, optimizer, activations)
    gpu_free = gpu_free_memory()
    if gpu_free is not None:
        k = min(GPU_MAX_K, int(GPU_MEMORY_FRACTION * gpu_free) // per_run)
    else:
        budget = CPU_MEMORY_FRACTION * available_host_memory() / concurrent_populations()
        k = min(CPU_MAX_K, int(budget) // per_run)
    if max_k is not None:
        k = min(k, max_k)
    return max(k, 1)


def populations(members: list, k: int) -> tuple[int, list[list]]:
    """Cut a group into the fewest populations of at most k runs, all of one size (so one
    compiled program serves them), with as little padding as that allows. Returns the size and
    the parts; the engine pads the last part with repeats of a run, whose outcomes it drops.

    >>> populations(list(range(5)), 2)
    (2, [[0, 1], [2, 3], [4]])
    """
    parts = -(-len(members) // k)
    size = -(-len(members) // parts)
    return size, [members[i:i + size] for i in range(0, len(members), size)]
