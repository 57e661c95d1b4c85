"""Domain errors. The CLI turns each into ``Error: ...`` with exit status 1."""


class MetaspaceError(Exception):
    """Base class for errors a user can act on; the message says what to do next."""


class SchemaBehindError(MetaspaceError):
    """The database schema is older than this version of metaspace."""


class InvalidRecordError(MetaspaceError):
    """A run record is malformed; the message names the record and the field."""

    def __init__(self, record: str, field: str, reason: str):
        self.record = record
        self.field = field
        self.reason = reason
        super().__init__(f"run {record!r}, field {field!r}: {reason}")


class VersionChanged(MetaspaceError):
    """The encoder version a vector was made with is no longer the active one (a rebuild switched)."""


class Note(UserWarning):
    """Something a command says in passing (one line; the command line prints it as ``note: ...``)."""

