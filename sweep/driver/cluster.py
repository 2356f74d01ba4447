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

    >>> from sweep.driver.cluster import ray_cluster
    >>> with ray_cluster(None) as info:                      # doctest: +SKIP
    ...     info.private, info.address.startswith("127.0.0.1:")
    (True, True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..engines.runtime import quiet_environment

# The longest temp root that still leaves room for Ray's
# <root>/session_<date>_<time>_<pid>/sockets/plasma_store under the socket limit.
MAX_TEMP_ROOT = 40
TEMP_PREFIX = "sweep-ray-"


@dataclass
class ClusterInfo:
    address: str
    private: bool          # started by this process, gone when it exits
    temp_dir: str | None   # the private Ray's session files


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
