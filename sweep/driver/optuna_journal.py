"""The Optuna storage of a study's copy: the journal file, opened, repaired and appended in bulk.

By default the copy is an Optuna journal file, `results/<study>/study.journal`
(appends, ~0.5 ms per run here; SQLite took ~11 ms); `--storage URL` names a
database server instead (any URL `optuna.create_study` takes, or `redis://`
for the journal on Redis). The journal is a copy that `OptunaRecord.reconcile`
rebuilds from the Parquet record at every start, which is what lets it be
written without an fsync per trial and without Optuna's lock file.

    >>> import tempfile
    >>> from pathlib import Path
    >>> storage = open_storage(Path(tempfile.mkdtemp()), None)
    >>> type(storage._backend).__name__
    'JournalCopy'
"""

from __future__ import annotations

import functools
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..results import faults

JOURNAL = "study.journal"


def open_storage(out: Path, url: str | None):
    """The storage for this study: `url`, or the journal file in the study directory.

    The caller holds the study directory's driver lock, so a journal lock file left by a
    killed driver is stale and removed."""
    if url:
        if url.startswith(("redis://", "rediss://")):
            from optuna.storages.journal import JournalRedisBackend, JournalStorage

            return JournalStorage(JournalRedisBackend(url))
        return url
    from optuna.storages.journal import JournalStorage

    path = out / JOURNAL
    _repair_journal(path)
    lock = Path(f"{path}.lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()
    return JournalStorage(journal_copy_class()(str(path)))


def _repair_journal(path: Path) -> None:
    """A driver killed mid-append leaves a last line without its newline; the next append
    would glue onto it and make the journal unreadable. Cut the torn tail."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = fh.seek(0) or fh.read()
        fh.truncate(data.rfind(b"\n") + 1)
        fh.flush()
        os.fsync(fh.fileno())


@functools.cache
def journal_copy_class() -> type:
    """Optuna's journal file backend, appended without an fsync per trial (defined once Optuna is imported).

    An fsync per trial (~1.7 ms here) would be the largest cost of the driver; the record
    syncs once per commit, and a torn tail is cut at the next start (`_repair_journal`).
    Nor is Optuna's lock file taken per append: the driver is the only writer, which the
    study directory's driver lock ensures (readers such as optuna-dashboard take no lock)."""
    from optuna.storages.journal import JournalFileBackend

    class JournalCopy(JournalFileBackend):
        def append_logs(self, logs: list[dict]) -> None:
            if not logs:
                return  # an empty line would make the journal unreadable
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
            with open(self._file_path, "ab") as fh:
                # Two writes with a fault point between, so the suite can tear a line as a
                # crash or a full disk can (`_repair_journal` cuts it): one more syscall.
                fh.write(data[:len(data) // 2])
                fh.flush()
                faults.point("journal.append")
                fh.write(data[len(data) // 2:])

        def sync(self) -> None:
            with open(self._file_path, "rb") as fh:
                os.fsync(fh.fileno())

    return JournalCopy


def append_trials(storage, study_id: int, trials: list[dict], dists: dict) -> None:
    """`add_trials` of finished trials (`create_trial`'s keyword arguments) for the journal file, as one append.

    Optuna's `add_trials` validates each trial, writes it to the journal and reads the
    journal back, one trial at a time: ~0.5-1 ms per run here, the driver's whole budget.
    This writes the CREATE_TRIAL entries `JournalStorage.create_new_trial` would (Optuna 5's
    journal format; tests/test_optuna_copy.py checks they read back the same), all at once;
    the storage reads them back at its next read, which a grid study never needs in-session."""
    from optuna.distributions import distribution_to_json
    from optuna.storages.journal._storage import JournalOperation

    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    dist_json = {k: distribution_to_json(d) for k, d in dists.items()}
    head = {"op_code": JournalOperation.CREATE_TRIAL, "worker_id": storage._replay_result.worker_id,
            "study_id": study_id, "datetime_start": now, "datetime_complete": now, "values": None,
            "distributions": dist_json, "intermediate_values": {}}
    logs = [head | t | {"params": {k: dists[k].to_internal_repr(v) for k, v in t["params"].items()}}
            for t in trials]
    with storage._thread_lock:
        storage._backend.append_logs(logs)


def sync(storage) -> None:
    """One fsync for what was appended since the last (journal file only)."""
    backend = getattr(storage, "_backend", None)
    if hasattr(backend, "sync"):
        backend.sync()
