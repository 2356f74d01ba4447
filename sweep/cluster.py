"""The Ray cluster a sweep runs on: an existing one, or a private local one started for it.

With an address (`--address`, or `RAY_ADDRESS` as `ray job submit` sets it)
the driver attaches to that cluster and leaves it running. Without one it
starts a Ray of its own for the length of the sweep, and that Ray:

* listens on 127.0.0.1 only: Ray binds to the node address, and a node
  address of 127.0.0.1 is kept only when Ray is told this is no cluster;
* keeps token authentication on with a token that lives in the
  environment, because Ray would otherwise write one to ~/.ray/auth_token;
* has no dashboard and no usage-stats collection or prompt;
* keeps its session files under a short directory in the system temp
  directory (a unix socket path may not exceed ~107 bytes), removed at exit;
* writes nothing to the home directory (Keras's and Matplotlib's config go
  to a cache in the temp directory unless the user already has them).

TensorFlow's C++ start-up lines bypass its own log-level variable;
`import_tensorflow` drops the INFO ones and keeps warnings and errors.

    >>> from sweep.cluster import ray_cluster
    >>> with ray_cluster(None) as info:                      # doctest: +SKIP
    ...     info.private, info.address.startswith("127.0.0.1:")
    (True, True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import xla

# The longest temp root that still leaves room for Ray's
# <root>/session_<date>_<time>_<pid>/sockets/plasma_store under the socket limit.
MAX_TEMP_ROOT = 40
TEMP_PREFIX = "sweep-ray-"

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) says nothing
# a sweep user can act on; Python warnings still show.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class ClusterInfo:
    address: str
    private: bool          # started by this process, gone when it exits
    temp_dir: str | None   # the private Ray's session files


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
    and compile cache set (`sweep.xla`).

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


def _temp_root() -> Path:
    base = Path(tempfile.gettempdir())
    # A long $TMPDIR (macOS's /var/folders/...) would push Ray's sockets past the limit.
    if len(str(base)) + len(TEMP_PREFIX) + 20 > MAX_TEMP_ROOT:
        base = Path("/tmp")
    return base


def _remove_stale_temp_dirs(base: Path) -> None:
    """Temp dirs of private Rays whose driver was killed (no chance to clean up) are removed."""
    for d in base.glob(f"{TEMP_PREFIX}*"):
        try:
            pid = int(d.name[len(TEMP_PREFIX):].split("-")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _private_env() -> dict[str, str]:
    env = {
        # Ray asks this to decide whether 127.0.0.1 may stay the node address; "0" means
        # "no cluster", so every Ray server binds to the loopback interface only.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    return env


def _reread_ray_settings() -> None:
    """Ray reads the variables above once, when it is imported (and this module must import
    it to know whether it is connected already), so they are read again after setting."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR,
                                                              not ray_constants.IS_WINDOWS_OR_OSX)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None,
                num_gpus: int | None = None) -> Iterator[ClusterInfo]:
    """Attach to `address` (or $RAY_ADDRESS), or start a private local Ray; disconnect at exit.

    Already connected (a test's cluster, a notebook): that connection is used as it is.
    """
    quiet_environment()
    import ray

    if ray.is_initialized():
        yield ClusterInfo(ray.get_runtime_context().gcs_address, private=False, temp_dir=None)
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        try:
            yield ClusterInfo(ray.get_runtime_context().gcs_address, private=False, temp_dir=None)
        finally:
            ray.shutdown()
        return

    base = _temp_root()
    _remove_stale_temp_dirs(base)
    temp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=base))
    env = _private_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reread_ray_settings()
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", _temp_dir=str(temp_dir),
                 logging_level=logging.WARNING, log_to_driver=True)
        try:
            yield ClusterInfo(ray.get_runtime_context().gcs_address, private=True, temp_dir=str(temp_dir))
        finally:
            ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reread_ray_settings()
        shutil.rmtree(temp_dir, ignore_errors=True)
