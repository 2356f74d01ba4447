"""TensorFlow in this process: set up once, before its first op, the same way in the driver and every worker.

`import_tensorflow` turns GPU memory growth on (without it TensorFlow takes all of a
GPU's memory at its first op, and a second population on the same device fails), sets
the CPU thread count a worker was given, XLA's flags and the compile cache (`xla`),
and drops TensorFlow's C++ start-up INFO lines, which bypass its own log-level variable
(warnings and errors still show). `quiet_environment` sets the variables that keep
TensorFlow and Ray start-up quiet.

    >>> from sweep.engines.runtime import import_tensorflow
    >>> tf = import_tensorflow()          # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from . import xla

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) says nothing
# a sweep user can act on; Python warnings still show.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "RAY_USAGE_STATS_ENABLED": "0"}


def quiet_environment() -> None:
    """Set the variables that keep TensorFlow and Ray start-up quiet, unless the user set them,
    and keep Keras's and Matplotlib's config files out of a home directory that has none."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    cache = Path(tempfile.gettempdir()) / f"sweep-cache-{os.getuid()}"
    home = Path.home()
    if "KERAS_HOME" not in os.environ and not (home / ".keras").exists():
        os.environ["KERAS_HOME"] = str(cache / "keras")
    if "MPLCONFIGDIR" not in os.environ and not (home / ".config" / "matplotlib").exists():
        os.environ["MPLCONFIGDIR"] = str(cache / "matplotlib")


# What TensorFlow's C++ side prints at import and first op through absl, which ignores
# TF_CPP_MIN_LOG_LEVEL before absl::InitializeLog: INFO lines ("I0000 ..."), the banner
# about that, and the CPU-instructions notice's second line.
_NOISE = re.compile(rb"^(I\d{4} |WARNING: All log messages before absl::InitializeLog|To enable the following "
                    rb"instructions|\S+ \S+: I (tensorflow|external)/)")


def import_tensorflow(threads: int | None = None):
    """Import and set up TensorFlow: its start-up INFO chatter dropped (warnings and errors
    still show), GPU memory growth on, `threads` CPU threads per op pool if given, XLA's flags
    and compile cache set (`sweep.engines.xla`).

    The chatter is written by C++ straight to file descriptor 2, so it is caught there.
    Settings only take before TensorFlow's first op, so a process imports it here first."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_environment()
    xla.configure()  # TensorFlow reads XLA's flags at its first op
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            for gpu in tf.config.list_physical_devices("GPU"):
                # Without it TensorFlow takes all of the GPU's memory at the first op.
                tf.config.experimental.set_memory_growth(gpu, True)
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            tf.constant(0)  # the CPU-feature notice comes with the first op
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if not _NOISE.match(line)]
            if kept:
                os.write(2, b"".join(kept))
    return tf
