"""The shapes of the REST API's bodies (pydantic) and the OpenAPI extras of its routes.

FastAPI documents the responses from these models; the predict and feedback bodies are read by
our own code (bounded, before validation), so their request bodies are described by hand here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from pomlia_hpc.serve.decode import IMAGE_TYPES


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


class Status(BaseModel):
    status: str
    model: str | None = None
    model_version: str | None = None


#: The error responses every route may give, for the OpenAPI description.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad input: corrupt image, wrong size or channel count, bad multipart"),
        (401, "missing or wrong bearer token"),
        (403, "route disabled (no token configured)"),
        (413, "upload, image side or image count over the limit"),
        (409, "reload refused: no link followed, or a bundle of another input or labels"),
        (415, "unsupported content type"),
        (422, "request body does not match the schema"),
        (503, "not ready or shutting down"),
    )
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}

#: The /v1/predict request body (read by :func:`pomlia_hpc.serve.bodies.uploaded_files`).
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "One image as the raw body (PNG, JPEG, TIFF, or NPY: (H,W[,C]) one image, "
            "(N,H,W[,C]) a batch), or several files as multipart/form-data (any field name, "
            "order kept). Size and channels must match /v1/model's 'input'."
        ),
        "content": {
            **{t: _BINARY for t in (*IMAGE_TYPES, "application/x-npy", "application/octet-stream")},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
        },
    }
}

#: The /v1/feedback request body (read by :func:`pomlia_hpc.serve.bodies.feedback_body`).
FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": FeedbackIn.model_json_schema()}},
    }
}
