"""The package's exceptions: every failure a user can cause is one of these, and the CLI prints
exactly these (and the OS errors a user causes: a missing, unreadable or read-only path) as one
line ``jntk <cmd>: error: …`` with exit status 2. Anything else is a bug and shows its traceback.

* :class:`ConfigError` — a config (YAML file, ``--set``, a command-line option) that cannot be used;
* :class:`InputError` — input data that cannot be used (a corrupt file, a wrong shape, NaN);
* :class:`StoreError` — a store that cannot be written or read as asked (locked, damaged, foreign);
* :class:`ConvergenceError` — a computation that missed its tolerance;
* :class:`ResourceError` — not enough memory, disk, workers or devices for the job as configured.

The value errors subclass :class:`ValueError` as well (code that caught ``ValueError`` before
still does). The lowest room of the house beside :mod:`jntk_dist.progress`: it imports nothing.
"""

from __future__ import annotations

import errno

__all__ = ["JntkError", "ConfigError", "InputError", "StoreError", "ConvergenceError",
           "ResourceError", "MissingBackendError", "JobInterrupted", "USER_OS_ERRNOS",
           "is_user_os_error", "available_memory", "require_memory"]


class JntkError(Exception):
    """Base of the package's errors: the message names the problem and the file or key.

    ``report``: what the job has to show besides the one-line message (the CLI prints it first),
    e.g. the summary of results written with ``converged: false``.
    """

    def __init__(self, message: str, report: str | None = None) -> None:
        super().__init__(message)
        self.report = report


class ConfigError(JntkError, ValueError):
    """A config that cannot be used; the message names the file (or source) and the key."""


class InputError(JntkError, ValueError):
    """Input data that cannot be used (a corrupt or truncated file, a wrong shape, non-finite
    values); the message names the file."""


class StoreError(JntkError, ValueError):
    """A store that cannot be read or written as asked: locked by another job, damaged, written
    by another config, or something else where the store belongs."""


class ConvergenceError(JntkError, RuntimeError):
    """A solve, an eigendecomposition or a λ_min that missed its tolerance."""


class ResourceError(JntkError, RuntimeError):
    """Not enough memory, disk space, workers or devices for the job as configured; the message
    says what would fit (a smaller tile, another output, the matrix-free route)."""


class MissingBackendError(ConfigError, ImportError):
    """A URL whose fsspec backend (s3fs, gcsfs, …) is not installed; the message names the pip
    extra. An :class:`ImportError` as well."""


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a job that has released its lock; ``detail`` says what was kept,
    e.g. ``14 of 16 tiles kept``. Still a :class:`KeyboardInterrupt`."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


# errors of the OS a user causes (not the package): a read-only file system, a full disk, a path
# that is a folder where a file belongs or the other way round, a missing or forbidden path
USER_OS_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                            errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                            errno.ENAMETOOLONG})


def is_user_os_error(err: BaseException) -> bool:
    """True for an :class:`OSError` that names a path the user gave or the state of the machine
    (missing, a folder, forbidden, read-only, full), not a fault of the package."""
    if isinstance(err, (FileNotFoundError, FileExistsError, IsADirectoryError,
                        NotADirectoryError, PermissionError)):
        return True  # raised by the package too, with a message naming the path
    return isinstance(err, OSError) and err.errno in USER_OS_ERRNOS


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``psutil.virtual_memory().available``, else
    ``MemAvailable`` of /proc/meminfo: not the free pages, which leave out the reclaimable page
    cache), or None where it cannot be told."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require_memory(need: float, what: str, instead: str) -> None:
    """A :class:`ResourceError` before work that needs ``need`` bytes when fewer are available:
    one line naming ``what`` and what to do ``instead`` (numpy would fail half-way with an
    ``_ArrayMemoryError``)."""
    free = available_memory()
    if free is not None and need > free:
        raise ResourceError(f"{what} needs {need / 2**30:.3g} GiB of memory but "
                            f"{free / 2**30:.3g} GiB are available: {instead}")
