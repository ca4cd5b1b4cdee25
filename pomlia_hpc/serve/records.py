"""The records of the prediction log (:mod:`.predlog`), one JSON object a line, as strict models.

Three kinds, told apart by ``type``:

* :class:`PredictionLine`: one answered image (written by :class:`~.predictor.Predictor`);
* :class:`FeedbackLine`: a label sent back for a prediction (``/v1/feedback``);
* :class:`RejectionLine`: a refused upload and why (counted by the monitor).

Like every file another process reads (:class:`~pomlia_hpc.config.Record`), a line with an
unknown or missing key or a mistyped value (``"3"`` is not 3) is refused by :func:`parse_line`,
and :func:`line_problem` says which key in one phrase. It validates a line's bytes directly
(pydantic-core parses and checks in one pass, about 1.6 times a plain ``orjson.loads``);
:func:`~.logfiles.read_records` stops at the first bad line with one error line naming the
file, the line and the key. The monitor reads a million lines with :func:`read_line`, which
takes the same fast path, ignores unknown keys (returning them beside the record), and counts
and quotes the bad lines instead of stopping.

A record's ``time`` is an ISO 8601 time with a UTC offset. The server writes UTC to the
microsecond (``2026-01-01T00:00:00.000000+00:00``), and the readers compare times as text (a
window, an hour's count): a time of another writer with another offset or spelling
(``...Z``, ``...+02:00``, no fraction) is read as the same instant in the server's form, and
one that is no such time (``"yesterday"``, no offset, 30 February) makes the line a bad one.

Compatibility between versions (the rule; docs/ARCHITECTURE.md, "Files other processes
read"): a record may carry ``format``, the major version of the log format it follows, written
only when above 1 (so no log written so far holds it). A writer that adds an optional key keeps
the format: an older monitor ignores the keys it does not know and says which. A writer that
changes the meaning or type of a key, or adds a required one, raises ``format``: every reader
of an older major format refuses such a record (:class:`NewerFormatError`) rather than misread
it. Per record, not per file: a line is read, quoted and copied on its own, one folder holds
the files of servers of several versions (a slot's successive champions), and a header line
would be a corrupt line to older readers.

The server builds feedback and rejection lines from these models. Prediction lines are built
as plain dicts on the batcher's thread (no model object per image on the hot path); a test
validates what the predictor emits against :class:`PredictionLine`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import orjson
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from pomlia_hpc.config import Record, problem


class PredictionOutput(Record):
    """What the model answered: the label (a list of labels for a multi-label task), its index
    (indices) and the probabilities in label order, rounded to 6 decimals."""

    label: str | list[str]
    label_index: int | list[int]
    probabilities: list[float]


#: The major version of the log format this version writes and reads (see the module
#: docstring): records of a higher ``format`` are refused, unknown keys of this one ignored.
LOG_FORMAT = 1


class _Line(Record):
    """What every line has: its own id, when, and the model, version and deployment (None for
    a server outside a deployment) that wrote it, and the log format's major version."""

    id: str
    time: str
    model: str
    model_version: str
    deployment: int | None
    #: Written only when above 1 (``LOG_FORMAT``): no record of this version carries it.
    format: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _utc_time(self) -> Self:
        # After the keys' own checks, so that a line's mistyped key is named before its time.
        text = self.time
        utc = log_time(text)
        if utc is not text:
            object.__setattr__(self, "time", utc)  # frozen: set once, while validating
        return self


#: The time as the server writes it (:func:`log_time`): UTC, to the microsecond.
_SERVER_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00")


def log_time(text: str) -> str:
    """``text``, an ISO 8601 time with a UTC offset, as the server writes times (UTC, to the
    microsecond): ``text`` itself when it is so written; a :class:`ValueError` naming the key
    for any other text (module docstring). On every line a reader parses: a time as the server
    writes it costs one ``datetime.fromisoformat`` and one match (measured: under 1 us of the
    12 to 13 us a prediction line takes to parse)."""
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            raise ValueError("no UTC offset")
        if _SERVER_TIME.fullmatch(text) is not None:
            return text
        return when.astimezone(UTC).isoformat(timespec="microseconds")
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved to UTC
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(
            "bad value for 'time': expected an ISO 8601 time with a UTC offset, such as "
            f"2026-01-01T00:00:00.000000+00:00 (got {shown!r})"
        ) from None


class PredictionLine(_Line):
    """One answered image."""

    type: Literal["prediction"]
    fingerprint_kind: str
    fingerprint: list[float]
    output: PredictionOutput
    #: The input image was kept (``--keep-inputs``); written only when true.
    input_kept: bool = False
    #: The number of images of its request, on the first prediction of a request of several
    #: (an NPY batch, several files); written only then. The monitor counts requests with it
    #: (a batch is one request, as a refused one is); a line without it is a request of its own.
    request_images: int = Field(default=1, ge=1)


class FeedbackLine(_Line):
    """A label for the prediction ``prediction_id`` (names and indices, as the model's)."""

    type: Literal["feedback"] = "feedback"
    prediction_id: str
    label: str | list[str]
    label_index: int | list[int]
    #: It replaces an earlier label of the same prediction; written only when true.
    replaces: bool = False
    #: Which label of the prediction it is (1 the first, 2 its first replacement, ...),
    #: counted by the deployment's servers under the feedback lock (:mod:`.feedgate`), so the
    #: order of a prediction's labels does not depend on the servers' clocks; written only
    #: when above 1. A replacement written before revisions has none (it reads as 1 with
    #: ``replaces``): its order is by time (:func:`.logfiles.later_label`).
    revision: int = Field(default=1, ge=1)


#: The rejection reason of a request whose body did not arrive in time (HTTP 408).
TIMEOUT_REASON = "timeout"
#: ... of an upload refused because the uploads in progress held too much memory (HTTP 503).
BUSY_REASON = "server-busy"
#: ... of an upload whose body was still arriving when the server stopped (HTTP 503).
SHUTDOWN_REASON = "shutting-down"
#: Rejection reasons that say nothing about the uploaded data (the client, the network or
#: the server's load failed): the monitor keeps them out of the refused share, its
#: data-quality figure.
TRANSPORT_REASONS = frozenset({TIMEOUT_REASON, BUSY_REASON, SHUTDOWN_REASON})
#: Rejection reasons of a request the HTTP layer refused before any file in it was read, by
#: its status: a body over the upload limit or of more files than allowed (413), a body or
#: file part in a content or transfer coding (415), a malformed body or header (400). They
#: say nothing about the images either: the monitor counts them apart from the refused share.
REQUEST_REASONS_BY_STATUS = {
    413: "request-too-large",
    415: "request-encoding",
    400: "malformed-request",
}
#: ... any other status of such a refusal.
MALFORMED_REQUEST_REASON = "malformed-request"
REQUEST_REASONS = frozenset({*REQUEST_REASONS_BY_STATUS.values(), MALFORMED_REQUEST_REASON})


class RejectionLine(_Line):
    """A refused upload: its HTTP status and a short reason (see ``handlers.rejection_reason``)."""

    type: Literal["rejection"] = "rejection"
    status: int
    reason: str


LogLine = PredictionLine | FeedbackLine | RejectionLine
KINDS: dict[str, type[LogLine]] = {
    "prediction": PredictionLine,
    "feedback": FeedbackLine,
    "rejection": RejectionLine,
}
_LINE: TypeAdapter[LogLine] = TypeAdapter(Annotated[LogLine, Field(discriminator="type")])


class BadLineError(ValueError):
    """A log line that is not a valid record; its message is :func:`line_problem`'s phrase,
    worked out only when asked for (the monitor quotes a few bad lines and counts the rest)."""

    def __init__(self, raw: bytes | str, *, unknown_keys_ok: bool = False) -> None:
        super().__init__()
        self.raw = raw
        #: Refused by :func:`read_line`, which ignores unknown keys: the message names a key
        #: that made it refuse the line, not an unknown one beside it.
        self.unknown_keys_ok = unknown_keys_ok

    def __str__(self) -> str:
        return line_problem(self.raw, unknown_keys_ok=self.unknown_keys_ok)


class NewerFormatError(BadLineError):
    """A record of a newer major log format (``format`` above :data:`LOG_FORMAT`): its keys
    may mean what this version would misread, so it is not read at all."""

    def __init__(self, raw: bytes | str, version: int) -> None:
        super().__init__(raw)
        self.version = version

    def __str__(self) -> str:
        return newer_format_problem(self.version)


def newer_format_problem(version: int) -> str:
    """The phrase for a record of log format ``version`` (above :data:`LOG_FORMAT`)."""
    return (
        f"record of log format {version}, newer than this version of pomlia reads "
        f"({LOG_FORMAT}); upgrade pomlia to read it"
    )


def to_line(record: PredictionLine | FeedbackLine | RejectionLine) -> dict[str, Any]:
    """``record`` as the dict the log writes: the optional flags only when true."""
    return {"type": record.type, **record.model_dump(mode="json", exclude_defaults=True)}


def parse_line(raw: bytes | str) -> LogLine:
    """The record on one log line (strict: an unknown key too is a :class:`BadLineError`
    naming the key); :class:`NewerFormatError` for a record of a newer major format."""
    try:
        rec = _LINE.validate_json(raw, strict=True)
    except ValidationError:
        version = _format_of(raw)
        if version > LOG_FORMAT:  # a newer format's keys may all differ from this one's
            raise NewerFormatError(raw, version) from None
        raise BadLineError(raw) from None
    if rec.format > LOG_FORMAT:
        raise NewerFormatError(raw, rec.format)
    return rec


def read_line(raw: bytes | str) -> tuple[LogLine, tuple[str, ...]]:
    """The record on one log line and the keys on it that this version does not know, as
    dotted paths (``("colour", "output.p")``), ignored: a newer writer's optional keys. A
    known key is checked as strictly as by :func:`parse_line` (a missing or mistyped one is a
    :class:`BadLineError`), and a record of a newer major format is a
    :class:`NewerFormatError`, whatever its keys."""
    try:
        rec = _LINE.validate_json(raw, strict=True)
    except ValidationError as exc:
        # The slow path, only for lines that are not a record of this version as they stand.
        return _without_unknown_keys(raw, exc)
    if rec.format > LOG_FORMAT:
        raise NewerFormatError(raw, rec.format)
    return rec, ()


def _without_unknown_keys(
    raw: bytes | str, exc: ValidationError
) -> tuple[LogLine, tuple[str, ...]]:
    """:func:`read_line` for a line the strict parse refused with ``exc``."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadLineError(raw) from None
    version = _format_of_data(data)
    if version > LOG_FORMAT:  # before the keys: a newer format's keys may all differ
        raise NewerFormatError(raw, version)
    errors = exc.errors()
    if any(e["type"] != "extra_forbidden" for e in errors):
        raise BadLineError(raw, unknown_keys_ok=True)
    # loc[0] is the union's tag (the record's type), then the keys down to the unknown one.
    unknown = _drop_unknown(data, [e["loc"][1:] for e in errors])
    try:
        rec = _LINE.validate_python(data, strict=True)
    except ValidationError:  # a bad time: checked only once the keys are all valid
        raise BadLineError(raw, unknown_keys_ok=True) from None
    return rec, unknown


def _drop_unknown(data: dict[str, Any], paths: list[tuple[int | str, ...]]) -> tuple[str, ...]:
    """Take the keys at ``paths`` (each a key path from the top, as pydantic gives it) out of
    ``data``; their dotted names (``output.p``)."""
    for *parents, key in paths:
        holder: Any = data
        for part in parents:
            holder = holder[part]
        del holder[key]
    return tuple(".".join(str(p) for p in path) for path in paths)


def _known_keys_error(
    model: type[LogLine], data: dict[str, Any], exc: ValidationError
) -> ValidationError:
    """``model``'s error for ``data`` without its unknown keys (those ``exc`` names), so that
    the problem named is one of a known key; ``exc`` when there is none."""
    _drop_unknown(data, [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"])
    try:
        model.model_validate(data, strict=True)
    except ValidationError as known:
        return known
    return exc


def _format_of(raw: bytes | str) -> int:
    """The ``format`` the line ``raw`` declares (1 when it has none, a mistyped one, which
    validation then names, or is not JSON)."""
    try:
        return _format_of_data(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return 1


def _format_of_data(data: Any) -> int:
    """The ``format`` a decoded line declares (see :func:`_format_of`)."""
    version = data.get("format", 1) if isinstance(data, dict) else 1
    return version if type(version) is int else 1


def line_problem(raw: bytes | str, *, unknown_keys_ok: bool = False) -> str:
    """What is wrong with the log line ``raw``, in one phrase that names the key (the slow
    path: only for lines :func:`parse_line` refused); ``unknown_keys_ok``: for a line
    :func:`read_line` refused, which a key it knows made it refuse."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return "expected a JSON object"
    if (version := _format_of_data(data)) > LOG_FORMAT:
        return newer_format_problem(version)
    if "type" not in data:
        return "key 'type' is missing"
    kind = data["type"]
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return f"unknown record type {kind!r}; known: {', '.join(sorted(KINDS))}"
    try:
        model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        if unknown_keys_ok:
            exc = _known_keys_error(model, data, exc)
        return problem(model, exc)
    return "not a valid record"  # not reached: the union refused what the model takes
