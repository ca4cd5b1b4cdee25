"""Errors a user can act on.

Every error raised for bad input or a bad environment is a :class:`PomliaError`. Its message says
what is wrong, where (file, field, key) and what was expected; the CLI prints it as one line and
exits with the error's ``exit_code``, without a traceback. The exit statuses of the ``pomlia``
command are one table (``docs/guide/README.md``, "Exit status"): 2 for bad input, and the
codes below for a refusal while another process holds the work, a thing not found, a service
out of reach and (``cli.app``) a bug.
"""

from __future__ import annotations


class PomliaError(Exception):
    """An error with a message meant for the user. ``exit_code`` is what the CLI returns."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class ConfigError(PomliaError):
    """A configuration file, key or value is wrong."""


class InputError(PomliaError):
    """A dataset, image or other user input is malformed."""


#: Exit status of a refusal because another live process holds what the command would do or
#: write (a study's or a loop run's driver, a monitor run of the same model, a training of the
#: same encoder, a pipeline's or a file's lock, the SQLite registry's write lock): nothing was
#: done, and the same command works once the holder lets go. One status for all of them, apart
#: from bad input (2): a script or a cron line retries on it alone.
BUSY_EXIT = 3


class BusyError(PomliaError):
    """Another live process holds what the command needs (see :data:`BUSY_EXIT`); the message
    names the holder and what to do (wait, or stop it)."""

    exit_code = BUSY_EXIT


#: Exit status of a named thing that does not exist (a name or id not in the registry, a file
#: or store that is not there), apart from bad input (2): `pomlia data show X || pomlia data
#: add X ...` must not add on any error.
NOT_FOUND_EXIT = 4


class NotFoundError(PomliaError):
    """A named thing (dataset, job, model, ...) is not in the registry, or a file or store that
    a command was pointed at is not there."""

    exit_code = NOT_FOUND_EXIT


#: Exit status of a service the command needs that did not answer (sysexits' EX_UNAVAILABLE).
UNAVAILABLE_EXIT = 69

#: Exit status of an unexpected failure, a bug: a traceback (sysexits' EX_SOFTWARE).
INTERNAL_EXIT = 70


class UnavailableError(PomliaError):
    """A service the command needs did not answer: the registry's database server refused or
    dropped the connection, or Slurm's controller did not answer. Nothing is wrong with the
    input; the same command may work once the service is back, so a script can retry on this
    exit status alone."""

    exit_code = UNAVAILABLE_EXIT


class ClusterError(PomliaError):
    """The cluster backend refused or failed an operation."""


class SlurmUnavailableError(UnavailableError, ClusterError):
    """Slurm's controller (or, for ``sacct``, its accounting daemon) did not answer: down,
    restarting or out of reach. A :class:`ClusterError` still (callers that go on without the
    scheduler's answer catch it as one), with the exit status of a service out of reach."""


class StorageError(PomliaError, OSError):
    """A file system would not take what a command wrote: no space left on the device, a full
    quota, a file over the size limit, or a read-only file system. Also an :class:`OSError`
    (``errno``, ``strerror``, ``filename`` set), so code that handles a failed write still
    catches it; its message is the one line for the user."""

    def __init__(self, message: str, number: int, strerror: str, path: str) -> None:
        PomliaError.__init__(self, message)
        OSError.__init__(self, number, strerror, path)

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, int, str, str]]:
        # a job's exception is pickled back to its submitter: rebuild it from its own fields
        fields = (self.message, self.errno or 0, self.strerror or "", str(self.filename))
        return (type(self), fields)


class ArrayNotWithdrawnError(ClusterError):
    """Part of a split array failed to be submitted and the parts before it could not be
    confirmed cancelled: they may still run and write their outputs."""


class DataIntegrityError(PomliaError):
    """Stored data differs from what was recorded at ingest (a damaged or undecodable chunk).
    Running the same command again fails the same way; ``pomlia data verify`` lists the
    damage."""


def integrity_failure(text: str | None) -> DataIntegrityError | None:
    """The :class:`DataIntegrityError` a job's traceback (or error text) reports, re-created,
    so that the process that waited for the job stops with the reader's own one-line message
    instead of a generic job failure; None if ``text`` reports none."""
    for line in reversed((text or "").splitlines()):
        _, found, message = line.partition("DataIntegrityError: ")
        if found and "pomlia data verify" in message:
            return DataIntegrityError(message.strip())
    return None
