"""The shapes of the REST API's bodies (pydantic) and the OpenAPI extras of its routes.

FastAPI documents the responses from these models; the predict and feedback bodies are read by
our own code (bounded, before validation), so their request bodies are described by hand here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from pomlia_hpc.models.card import ModelCard
from pomlia_hpc.serve.decode import IMAGE_TYPES, NPY_TYPES, SNIFFED_TYPES, Limits


class ErrorBody(BaseModel):
    error: str
    status: int


class Prediction(BaseModel):
    id: str = Field(description="prediction id: send it back with /v1/feedback")
    label: str | list[str] = Field(description="the label (a list for multi-label tasks)")
    label_index: int | list[int]
    probabilities: dict[str, float] = Field(description="label name -> probability")


class PredictResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]


class FeedbackIn(BaseModel):
    # A misspelt key ("replace") must not be dropped silently: refused with its name.
    model_config = ConfigDict(extra="forbid")

    # Strict types: JSON true is not class 1, "3" is not index 3, 2.0 is not an index.
    prediction_id: StrictStr = Field(
        description="the id /v1/predict returned", examples=["0123456789abcdef0123456789abcdef"]
    )
    label: StrictStr | StrictInt | list[StrictStr | StrictInt] = Field(
        description="the true label: a class name or an index; a list for multi-label tasks"
    )
    replaces: StrictBool = Field(
        False, description="true to replace a label sent earlier for this prediction (else 409)"
    )


class FeedbackOut(BaseModel):
    id: str
    prediction_id: str
    recorded: bool


class ReloadOut(BaseModel):
    reloaded: bool
    model: str
    model_version: str
    previous_model: str | None = None
    previous_version: str | None = None


class ServingLimits(BaseModel):
    max_batch: int = Field(description="images per model call")
    max_wait_ms: float = Field(description="longest wait for a batch to fill, ms")
    max_upload_bytes: int = Field(description="largest request body, bytes (413 beyond)")
    max_images: int = Field(description="most images per request, all files together (413)")
    max_side_px: int = Field(description="longest image side, px (413 beyond)")


class ModelCardOut(ModelCard):
    """``GET /v1/model``: the bundle's model card and the limits this server applies."""

    serving: ServingLimits


class Status(BaseModel):
    status: str
    model: str | None = None
    model_version: str | None = None


#: What each refusal code means, for the OpenAPI description of the routes that send it.
ERROR_TEXT: dict[int, str] = {
    400: "bad input: corrupt image, unreadable pixel type, wrong size or channel count, bad "
    "multipart",
    401: "missing or wrong bearer token",
    403: "route disabled (no token configured)",
    404: "prediction_id was not issued by this deployment",
    408: "request head or body not received in time (the connection is closed)",
    409: "conflict: a second label without replaces, or a reload the server refuses",
    413: "upload, image side or image count over the limit",
    415: "unsupported content type or image format (BMP, GIF, ...: declared or read from the "
    "data), or a body sent with a content coding (Content-Encoding)",
    422: "request body does not match the schema, or gives a key twice",
    431: "request head too large or too many header fields (the connection is closed)",
    500: "the model produced a non-finite output (NaN or infinity) for an image of the "
    "request: no prediction is made for the request (logged as a rejection, "
    "non-finite-output)",
    503: "not ready or shutting down, the prediction log cannot be written, or (feedback) "
    "another server of the deployment held the feedback lock too long",
}

#: The header every 503 carries (``serve.bodies.error_response``).
RETRY_AFTER = {
    "description": "seconds to wait before sending the request again",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}

#: Sent for any route, by the connection guard before routing (``serve.guards``).
TRANSPORT_CODES = (408, 431)

#: The refusal codes each route really sends (tests compare the OpenAPI description with
#: these and provoke each one over HTTP). A 5xx other than these (a 500 of /v1/predict: the
#: model's output was not finite, tests/test_serve_nonfinite.py) is a bug, not documented.
ROUTE_ERRORS: dict[str, tuple[int, ...]] = {
    "/v1/predict": (400, 408, 413, 415, 431, 500, 503),
    "/v1/feedback": (400, 401, 403, 404, 408, 409, 413, 415, 422, 431, 503),
    "/v1/admin/reload": (401, 403, 408, 409, 431, 503),
    "/ready": (*TRANSPORT_CODES, 503),
    "/health": TRANSPORT_CODES,
    "/v1/model": TRANSPORT_CODES,
    "/metrics": TRANSPORT_CODES,
}


def errors(route: str) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of ``route`` (FastAPI's ``responses=``)."""
    # The JSON content is spelled out, not given as ``model=``: FastAPI files a model under
    # the route's own media type, and /metrics answers text, while its refusals are JSON.
    body = {"application/json": {"schema": ErrorBody.model_json_schema()}}
    out: dict[int | str, dict[str, Any]] = {
        code: {"description": ERROR_TEXT[code], "content": body} for code in ROUTE_ERRORS[route]
    }
    if 503 in out:
        out[503]["headers"] = {"Retry-After": RETRY_AFTER}
    return out


_BINARY = {"schema": {"type": "string", "format": "binary"}}


def predict_body(limits: Limits) -> dict[str, Any]:
    """The /v1/predict request body (read by :func:`pomlia_hpc.serve.formdata.uploaded_files`),
    with this server's limits: a client reads them here, not by being refused."""
    return {
        "requestBody": {
            "required": True,
            "description": (
                "One image as the raw body (PNG, JPEG, TIFF, or NPY: (H,W[,C]) one image, "
                "(N,H,W[,C]) a batch), or several files as multipart/form-data (any field "
                "name, order kept). Size and channels must match /v1/model's 'input'. Limits "
                f"(413 beyond): a body of at most {limits.max_upload_bytes} bytes, at most "
                f"{limits.max_images} images per request (all files together), at most "
                f"{limits.max_side_px} px a side. Sent as is: no Content-Encoding (415)."
            ),
            "content": {
                **{t: _BINARY for t in (*IMAGE_TYPES, *NPY_TYPES, *SNIFFED_TYPES)},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                        "required": ["file"],
                    }
                },
            },
        }
    }


def feedback_body(max_bytes: int) -> dict[str, Any]:
    """The /v1/feedback request body (read by :func:`pomlia_hpc.serve.bodies.feedback_body`),
    at most ``max_bytes`` bytes."""
    return {
        "requestBody": {
            "required": True,
            "description": (
                f"At most {max_bytes} bytes of JSON (413 beyond), each key once (422 otherwise)."
            ),
            "content": {"application/json": {"schema": FeedbackIn.model_json_schema()}},
        }
    }
