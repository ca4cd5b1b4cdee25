"""The inference pipeline behind ``/v1/predict``: batch → model → outputs → durable log → answer.

:class:`Predictor` owns the runtime, the dynamic batcher and the prediction log. Its
``process`` runs on the batcher's thread: normalise, run the model, turn logits into labels and
probabilities, fingerprint the inputs, and build both the answers and the log records. Its
``finish`` appends the records to the log and releases the answers only once they are durable.
With ``keep_inputs`` each image also becomes an inbox record (:mod:`.inbox`), committed with
its log record. Several predictors may share one log: a hot swap (:mod:`.app`) starts the new
bundle's predictor on the running log and closes the old one's batcher only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pomlia_hpc.serve.batching import Deliver, DynamicBatcher
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.fingerprint import (
    STATS_KIND,
    FingerprintFn,
    logged_vectors,
    stats_fingerprint,
)
from pomlia_hpc.serve.ids import prediction_ids
from pomlia_hpc.serve.inbox import encode_image
from pomlia_hpc.serve.issued import IssuedIds
from pomlia_hpc.serve.metrics import ServerMetrics
from pomlia_hpc.serve.predlog import PredictionLog, Record
from pomlia_hpc.serve.runtime import (
    LOGGED_DECIMALS,
    Runtime,
    normalize_,
    probabilities,
    to_nchw,
)
from pomlia_hpc.vocab import MULTI_LABEL_THRESHOLD

Prediction = dict[str, Any]

#: The rejection reason logged for a request the model answered with a non-finite output
#: (NaN or infinity: a diverged network, an overflow) for one of its images. No class is made
#: up for it (an argmax reads NaN as the largest value: class 0), the client gets a 500, and
#: the monitor counts the request among its refused ones, by this reason.
NONFINITE_REASON = "non-finite-output"


class ModelOutputError(Exception):
    """The model's output for an image of the request is not finite: no prediction made."""


@dataclass(frozen=True)
class BatchResult:
    """What one request gets back (``predictions``, or ``error`` when the model gave no
    usable output) and what is logged for it (``records``)."""

    predictions: list[Prediction]
    records: list[Record]
    inputs: bytes = b""
    error: str | None = None


def now_iso() -> str:
    """Current UTC time, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Predictor:
    """Runs predictions for one bundle; see the module docstring."""

    def __init__(
        self,
        bundle: ExportedBundle,
        runtime: Runtime,
        log: PredictionLog,
        metrics: ServerMetrics,
        *,
        max_batch: int,
        max_wait_s: float,
        fingerprint: FingerprintFn | None = None,
        fingerprint_kind: str = STATS_KIND,
        deployment_id: int | None = None,
        keep_inputs: bool = False,
        issued: IssuedIds | None = None,
    ) -> None:
        self.bundle = bundle
        self.issued = issued
        self.keep_inputs = keep_inputs
        self.runtime = runtime
        self.log = log
        self.metrics = metrics
        self.labels = bundle.labels
        self.multi_label = bundle.task_type == "multi-label"
        self._mean = np.asarray(bundle.mean, dtype=np.float32)
        self._std = np.asarray(bundle.std, dtype=np.float32)
        self._fingerprint = fingerprint or stats_fingerprint
        self._fingerprint_kind = fingerprint_kind if fingerprint else STATS_KIND
        self._deployment = deployment_id
        self.batcher: DynamicBatcher[BatchResult] = DynamicBatcher(
            self.process,
            self.finish,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            on_batch=metrics.observe_batch,
            name="model-worker",
        )

    async def predict(self, images: np.ndarray) -> list[Prediction]:
        """Classify float32 NHWC images in [0, 1]; returns one prediction per image. A
        :class:`ModelOutputError` when the model's output for one of them is not finite (the
        refusal is logged by then)."""
        self.metrics.queue_depth.set(self.batcher.depth)
        result = await self.batcher.submit(images)
        if result.error is not None:
            raise ModelOutputError(result.error)
        return result.predictions

    @property
    def ready(self) -> bool:
        return self.batcher.alive and self.log.healthy

    def close(self, *, close_log: bool = True) -> None:
        """Answer everything queued, then close the log (which writes what is left); with
        ``close_log=False`` (a hot swap) the log stays open for the next predictor."""
        self.batcher.close()
        if close_log:
            self.log.close()

    def process(self, arrays: Sequence[np.ndarray]) -> list[BatchResult]:
        """Run the model on the concatenated arrays; split the outputs back per request."""
        images = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        x = to_nchw(images)
        # Fingerprint before normalising x in place; float32 rows go to the log as they are.
        fps = logged_vectors(self._fingerprint, x)
        logits = self.runtime.logits(normalize_(x, self._mean, self._std))
        finite = np.asarray(np.isfinite(logits).all(axis=1))
        # Non-finite rows become zeros before the softmax only to keep NaN out of the
        # arithmetic: their requests are refused below, nothing is answered from them.
        probs = probabilities(np.where(finite[:, None], logits, 0.0), self.bundle.task_type)
        rows = np.round(probs, LOGGED_DECIMALS).tolist()
        labels = self.labels
        indices: list[Any]
        if self.multi_label:
            indices = [np.flatnonzero(p > MULTI_LABEL_THRESHOLD).tolist() for p in probs]
            names: list[Any] = [[labels[i] for i in idx] for idx in indices]
        else:
            indices = probs.argmax(axis=1).tolist()
            names = [labels[i] for i in indices]
        when = now_iso()
        out: list[BatchResult] = []
        start = 0
        for arr in arrays:
            if not finite[start : start + len(arr)].all():
                out.append(self._refused(finite[start : start + len(arr)], when))
                start += len(arr)
                continue
            preds, recs, kept = [], [], []
            ids = prediction_ids(len(arr))  # timed: the monitor's look-up opens fewer files
            for i in range(start, start + len(arr)):
                pid = ids[i - start]
                preds.append(
                    {
                        "id": pid,
                        "label": names[i],
                        "label_index": indices[i],
                        "probabilities": dict(zip(labels, rows[i], strict=True)),
                    }
                )
                recs.append(
                    {
                        "type": "prediction",
                        "id": pid,
                        "time": when,
                        "model": self.bundle.name,
                        "model_version": self.bundle.version,
                        "deployment": self._deployment,
                        "fingerprint_kind": self._fingerprint_kind,
                        "fingerprint": fps[i],
                        "output": {
                            "label": names[i],
                            "label_index": indices[i],
                            "probabilities": rows[i],
                        },
                    }
                )
                if i == start and len(arr) > 1:
                    recs[-1]["request_images"] = len(arr)  # the monitor counts requests by it
                if self.keep_inputs:
                    recs[-1]["input_kept"] = True
                    kept.append(encode_image(pid, when, images[i]))
            out.append(BatchResult(preds, recs, b"".join(kept)))
            start += len(arr)
        return out

    def _refused(self, finite: np.ndarray, when: str) -> BatchResult:
        """The result of a request whose images' outputs are not all ``finite``: no
        prediction, one rejection record (the monitor counts it), the error the client gets."""
        bad = np.flatnonzero(~finite).tolist()
        which = ", ".join(map(str, bad[:10])) + (", …" if len(bad) > 10 else "")
        error = (
            f"model {self.bundle.name} ({self.bundle.version}) produced non-finite outputs "
            f"(NaN or infinity) for {len(bad)} of the request's {len(finite)} image(s) (index "
            f"{which}): no prediction was made for the request; the failure is logged"
        )
        record = {
            "type": "rejection",
            "id": os.urandom(16).hex(),
            "time": when,
            "model": self.bundle.name,
            "model_version": self.bundle.version,
            "deployment": self._deployment,
            "status": 500,
            "reason": NONFINITE_REASON,
        }
        return BatchResult([], [record], b"", error)

    def finish(self, results: Sequence[BatchResult], deliver: Deliver) -> None:
        """Log every record of the batch durably, then answer (see :mod:`.predlog`)."""
        if self.issued is not None:  # before the answer: feedback may follow at once
            # Prediction ids only: a refused request's rejection record takes no feedback.
            self.issued.add(
                r["id"] for res in results for r in res.records if r["type"] == "prediction"
            )
        self.log.append(
            [r for res in results for r in res.records],
            deliver,
            inputs=b"".join(res.inputs for res in results) if self.keep_inputs else b"",
        )
