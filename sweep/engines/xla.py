"""XLA as the population engine uses it: its code-generation flags, and compiled programs kept
across processes in XLA's persistent compilation cache, made safe to share.

Both are read by TensorFlow once, at its first op, so `configure` runs before that
(`engines.runtime.import_tensorflow`, and on importing the population engine's programs).

A sweep, its resume, `sweep reproduce` and the tests compile the same population programs again
and again; TensorFlow can keep each XLA executable on disk (`TF_XLA_FLAGS`
`--tf_xla_persistent_cache_directory`) and load it in the next process instead of compiling.
Three things stand between that flag and a cache a sweep can rely on:

* **Where.** The cache lives in `$SWEEP_COMPILE_CACHE`, or `$XDG_CACHE_HOME/stability-sweep`
  (`~/.cache/stability-sweep` without it), never in the repository; `SWEEP_COMPILE_CACHE=off`
  turns it off. Entries go to a subdirectory keyed by the TensorFlow version, `XLA_FLAGS` and
  the CPU's features: XLA keys an entry by its program only, and an executable compiled with
  other flags, by another TensorFlow, or for another CPU (a home directory shared by cluster
  nodes) must never be loaded.
* **Names.** XLA keys an entry by the traced function's name, which TensorFlow numbers with a
  process-wide counter (`__inference__epoch_1085`): the same program traced in another process,
  after other programs, gets another name and never hits. `stable_names` numbers the functions
  of one trace from a hash of what the program is instead.
* **Damage.** TensorFlow loads an entry's executable unchecked: a truncated entry raises
  `DataLossError` in the middle of a run, and flipped bytes in the machine code would run.
  Every entry this process sees compiled is sealed with a SHA-256 beside it (`seal`); at start a
  process deletes every entry whose seal is missing or does not match (`check`), so a damaged
  entry is compiled again, never loaded. The seal also records the entry's inode, size and
  change time once they have settled, and an entry that still has them is not hashed again:
  any write or replacement changes them. Past `MAX_BYTES` the least recently used entries go.

    >>> import os, tempfile
    >>> saved = os.environ.get("SWEEP_COMPILE_CACHE")
    >>> os.environ["SWEEP_COMPILE_CACHE"] = tempfile.mkdtemp()
    >>> d = directory()
    >>> d.parent == Path(os.environ["SWEEP_COMPILE_CACHE"]), d.name.startswith("xla-")
    (True, True)
    >>> entry = d / "xla_compile_cache__1__2__XLA_CPU_JIT.pb"
    >>> d.mkdir(parents=True); _ = entry.write_bytes(b"executable")
    >>> seal(d), check(d), entry.exists()
    (1, 0, True)
    >>> _ = entry.write_bytes(b"executab1e")   # damaged after it was sealed
    >>> check(d), entry.exists()
    (1, False)
    >>> _ = entry.write_bytes(b"executable"); seal(d), trim(d, max_bytes=4), entry.exists()
    (1, 1, False)
    >>> os.environ["SWEEP_COMPILE_CACHE"] = "off"; directory() is None
    True
    >>> _ = os.environ.pop("SWEEP_COMPILE_CACHE") if saved is None else os.environ.update(SWEEP_COMPILE_CACHE=saved)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Iterator

# XLA's CPU tree-reduction rewrite turns each per-run reduction (gradient norm, finiteness test)
# into a reduce-window with a materialised intermediate, several times slower than the plain
# reduction; only the summation order of reductions changes.
_NO_TREE = "--xla_disable_hlo_passes=tree_reduction_rewriter"
# LLVM's optimisation level 1 for XLA's CPU code instead of 3 compiles faster and runs this
# program's steps faster; only code generation changes (where a multiply and an add contract
# into one FMA), so values move by rounding only.
_LLVM_O1 = "--xla_backend_optimization_level=1"
FLAGS = (_NO_TREE, _LLVM_O1)

ENV = "SWEEP_COMPILE_CACHE"
OFF = ("off", "0", "false", "no")
ENTRY_GLOB = "xla_compile_cache__*.pb"
SEAL = ".sha256"
# TensorFlow writes an entry to a temporary file and renames it; one left by a killed process
# is removed once it is older than this.
STALE_TEMP_SECONDS = 3600.0
# A seal vouches for an entry by its change time only once that time is this far in the past.
SETTLED_SECONDS = 2.0
# Every population size of every group is its own entry (about 0.5 MB for the catalog's models),
# so the cache grows with every new study; past this size the least recently used go.
MAX_BYTES = 2 << 30


def root() -> Path | None:
    """The cache's root directory, or None when it is off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stability-sweep"


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return f"{platform.machine()} {platform.processor()}"


def directory() -> Path | None:
    """This process's entries: the root's subdirectory for its TensorFlow, XLA flags and CPU.

    Reads TensorFlow's version from its metadata, so it can be called before TensorFlow is
    imported (it must be: XLA reads `TF_XLA_FLAGS` once, at its first compilation)."""
    base = root()
    if base is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        tf_version = version("tensorflow")
    except PackageNotFoundError:
        tf_version = "unknown"
    key = "\n".join([tf_version, os.environ.get("XLA_FLAGS", ""), _cpu_features()])
    return base / f"xla-{tf_version}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _identity(st: os.stat_result) -> str:
    """What changes whenever a file is written or replaced: its inode, size and change time
    (which, unlike the modification time, no call can set back)."""
    return f"{st.st_ino} {st.st_size} {st.st_ctime_ns}"


def _digest(path: Path) -> tuple[str, str | None]:
    """The file's SHA-256, and its identity if it can vouch for that content at a later check:
    the file did not change while it was read, and its last change is older than
    `SETTLED_SECONDS`, so that any later write gets a later change time (file times advance
    by the kernel's clock tick, not by the nanosecond)."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        digest = hashlib.sha256(f.read()).hexdigest()
        after = os.fstat(f.fileno())
    settled = time.time_ns() - after.st_ctime_ns > SETTLED_SECONDS * 1e9
    return digest, (_identity(after) if settled and _identity(before) == _identity(after) else None)


def _write_seal(entry: Path, digest: str, identity: str | None) -> None:
    # Written to a temporary name and renamed, so that a reader never sees half a seal.
    seal_path = entry.with_name(entry.name + SEAL)
    temp = seal_path.with_name(f"{seal_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_text(digest if identity is None else f"{digest} {identity}")
    os.replace(temp, seal_path)


def seal(d: Path) -> int:
    """Seal the entries that have no seal yet (those compiled since the last call); returns how
    many. An entry appears whole (TensorFlow renames it into place), so it is sealed as it is."""
    sealed = 0
    for entry in d.glob(ENTRY_GLOB):
        if not entry.with_name(entry.name + SEAL).exists():
            try:
                _write_seal(entry, *_digest(entry))
                sealed += 1
            except FileNotFoundError:  # another process removed it meanwhile
                pass
    return sealed


def _intact(entry: Path, seal_path: Path) -> bool:
    """Whether the entry holds what its seal says. An entry unchanged since its seal was
    written (the same identity) is not read again: hashing every entry at every start costs
    about a second per 300 MB, in the driver and in every worker. Otherwise it is hashed, and
    its seal brought up to date when the content is right (say, the cache was copied)."""
    try:
        digest, _, identity = seal_path.read_text().strip().partition(" ")
        if identity and identity == _identity(entry.stat()):
            return True
        actual, now = _digest(entry)
    except FileNotFoundError:
        return False
    if actual != digest:
        return False
    if now is not None:
        _write_seal(entry, digest, now)
    return True


def check(d: Path) -> int:
    """Delete every entry whose seal is missing or does not match, seals without an entry, and
    temporary files left by killed processes; returns how many entries were deleted."""
    deleted = 0
    if not d.is_dir():
        return 0
    for entry in d.glob(ENTRY_GLOB):
        seal_path = entry.with_name(entry.name + SEAL)
        if not _intact(entry, seal_path):
            for path in (entry, seal_path):
                path.unlink(missing_ok=True)
            deleted += 1
    for seal_path in d.glob(f"*{SEAL}"):
        if not seal_path.with_name(seal_path.name[:-len(SEAL)]).exists():
            seal_path.unlink(missing_ok=True)
    now = time.time()
    for temp in d.glob("*.tmp*"):
        with contextlib.suppress(FileNotFoundError):
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink()
    return deleted + trim(d)


def trim(d: Path, max_bytes: int = MAX_BYTES) -> int:
    """Delete the least recently used entries (by access or modification time, whichever is
    later) until the directory holds at most `max_bytes`; returns how many went."""
    entries = []
    for entry in d.glob(ENTRY_GLOB):
        with contextlib.suppress(FileNotFoundError):
            st = entry.stat()
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, entry))
    total = sum(size for _, size, _ in entries)
    deleted = 0
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        for path in (entry, entry.with_name(entry.name + SEAL)):
            path.unlink(missing_ok=True)
        total -= size
        deleted += 1
    return deleted


def configure() -> Path | None:
    """Set XLA's flags (`FLAGS`, unless the user set them otherwise) and point XLA at this
    process's cache directory, after deleting what is damaged in it. Returns the directory, or
    None when the cache is off or its directory cannot be made (programs then compile as
    without it). Only the first call in a process acts."""
    global _configured
    if _configured is not False:
        return _configured
    for flag in FLAGS:
        if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    _configured = _enable_cache()
    return _configured


_configured: Path | None | bool = False


def _enable_cache() -> Path | None:
    d = directory()
    if d is None:
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
        check(d)
    except OSError:
        return None
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "--tf_xla_persistent_cache_directory" not in flags:
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={d}".strip()
    return d


def active() -> Path | None:
    """The directory XLA writes to in this process, if any."""
    for flag in os.environ.get("TF_XLA_FLAGS", "").split():
        if flag.startswith("--tf_xla_persistent_cache_directory="):
            return Path(flag.split("=", 1)[1])
    return None


def in_fresh_process(code: str, cache: str, timeout: float | None = None):
    """Run the Python `code` in a new interpreter whose compile cache is `cache` (a directory, or
    "off"), whatever this process uses, and return the JSON value of the last line it printed;
    RuntimeError with the end of its stderr if it fails. How a second sweep meets the cache::

        >>> in_fresh_process("import json; print(json.dumps(2 + 2))", "off")
        4
    """
    import json
    import subprocess
    import sys

    env = {**os.environ, ENV: cache}
    env.pop("TF_XLA_FLAGS", None)  # set by this process's own cache, if it has one
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


_local = threading.local()
_traced: dict[int, str] = {}
_traced_lock = threading.Lock()


# TensorFlow's name makers for a trace's functions (the traced function itself, the bodies of its
# while loops), as TensorFlow 2.21 writes them with its process-wide counter in place of `uid`.
_MAKERS = {
    ("concrete_function", "_inference_name"): lambda uid, n: f"__inference_{n}_{uid}",
    ("concrete_function", "_forward_name"): lambda uid, n: f"__forward_{n}_{uid}",
    ("concrete_function", "_backward_name"): lambda uid, n: f"__backward_{n}_{uid}",
    ("control_flow_util_v2", "unique_fn_name"): lambda uid, scope, name: f"{scope}{name}_{uid}".replace("/", "_"),
    ("control_flow_util_v2", "unique_grad_fn_name"): lambda uid, forward_name: f"{forward_name}_grad_{uid}",
}


def _numbered(original, make):
    """`original` outside `stable_names`; inside, the same name numbered from this thread's counter."""
    def name(*args):
        counter = getattr(_local, "counter", None)
        return original(*args) if counter is None else make(next(counter), *args)
    name.original = original
    return name


def _install() -> bool:
    """Wrap TensorFlow's name makers once; False when this TensorFlow does not have them."""
    from tensorflow.python.eager.polymorphic_function import concrete_function
    from tensorflow.python.ops import control_flow_util_v2

    modules = {"concrete_function": concrete_function, "control_flow_util_v2": control_flow_util_v2}
    if not all(hasattr(modules[m], n) for m, n in _MAKERS):
        return False
    for (m, n), make in _MAKERS.items():
        if not hasattr(getattr(modules[m], n), "original"):
            setattr(modules[m], n, _numbered(getattr(modules[m], n), make))
    return True


@contextlib.contextmanager
def stable_names(key: str) -> Iterator[None]:
    """Number the functions traced in this block from a hash of `key` (what the program is), so
    that the same program has the same names, and XLA the same cache key, in every process.

    Two different programs with one key in one process would clash; the second is then traced
    with TensorFlow's own numbering (it compiles, it just does not hit the cache)."""
    base = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    with _traced_lock:
        clash = _traced.setdefault(base, key) != key
    if clash or not _install():
        yield
        return
    # 2**40 + hash * 2**20: far above TensorFlow's own counter, 2**20 names for one trace.
    _local.counter = itertools.count((1 << 40) + (base << 20))
    try:
        yield
    finally:
        _local.counter = None
