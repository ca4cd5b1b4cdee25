"""The records of the prediction log (:mod:`.predlog`), one JSON object a line, as strict models.

Three kinds, told apart by ``type``:

* :class:`PredictionLine`: one answered image (written by :class:`~.predictor.Predictor`);
* :class:`FeedbackLine`: a label sent back for a prediction (``/v1/feedback``);
* :class:`RejectionLine`: a refused upload and why (counted by the monitor).

Like every file another process reads (:class:`~pomlia_hpc.config.Record`), a line with an
unknown or missing key or a mistyped value (``"3"`` is not 3) is refused, and
:func:`line_problem` says which key in one phrase. :func:`parse_line` validates a line's bytes
directly (pydantic-core parses and checks in one pass, about 1.6 times a plain
``orjson.loads``): the monitor reads a million lines this way and counts and quotes the bad
ones instead of stopping; :func:`~.predlog.read_records` stops at the first with one error
line naming the file, the line and the key.

The server builds feedback and rejection lines from these models. Prediction lines are built
as plain dicts on the batcher's thread (no model object per image on the hot path); a test
validates what the predictor emits against :class:`PredictionLine`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from pomlia_hpc.config import Record, problem


class PredictionOutput(Record):
    """What the model answered: the label (a list of labels for a multi-label task), its index
    (indices) and the probabilities in label order, rounded to 6 decimals."""

    label: str | list[str]
    label_index: int | list[int]
    probabilities: list[float]


class _Line(Record):
    """What every line has: its own id, when, and the model, version and deployment (None for
    a server outside a deployment) that wrote it."""

    id: str
    time: str
    model: str
    model_version: str
    deployment: int | None


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

    def __init__(self, raw: bytes | str) -> None:
        super().__init__()
        self.raw = raw

    def __str__(self) -> str:
        return line_problem(self.raw)


def to_line(record: PredictionLine | FeedbackLine | RejectionLine) -> dict[str, Any]:
    """``record`` as the dict the log writes: the optional flags only when true."""
    return {"type": record.type, **record.model_dump(mode="json", exclude_defaults=True)}


def parse_line(raw: bytes | str) -> LogLine:
    """The record on one log line (strict); :class:`BadLineError` naming the key otherwise."""
    try:
        return _LINE.validate_json(raw, strict=True)
    except ValidationError:
        raise BadLineError(raw) from None


def line_problem(raw: bytes | str) -> str:
    """What is wrong with the log line ``raw``, in one phrase that names the key (the slow
    path: only for lines :func:`parse_line` refused)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return "expected a JSON object"
    if "type" not in data:
        return "key 'type' is missing"
    kind = data["type"]
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return f"unknown record type {kind!r}; known: {', '.join(sorted(KINDS))}"
    try:
        model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        return problem(model, exc)
    return "not a valid record"  # not reached: the union refused what the model takes
