"""All checks of one window against the reference: which tests run, with which share of alpha,
and the data-quality summary.

Alpha is split before any p-value is seen: when the window has at least
:data:`MIN_LABELS` feedback labels, the accuracy test gets :data:`PERFORMANCE_SHARE` of it (a
labelled drop is the most direct evidence, and the drift tests' p-values under a real shift are
far below their share anyway) and the drift tests share the rest equally; otherwise the drift
tests share all of it. Input-drift tests need :data:`MIN_VECTORS` fingerprints in the window
and in the reference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from pomlia_hpc.automl.resampled import FEW_CLASS_IMAGES, RESAMPLED_METRICS
from pomlia_hpc.monitor.logread import LogWindow
from pomlia_hpc.monitor.metrictest import metric_performance_test
from pomlia_hpc.monitor.stats import (
    N_PERM,
    CheckResult,
    classifier_test,
    combine,
    confidence_test,
    ks_test,
    label_test,
    labelwise_performance_test,
    mmd_test,
    performance_test,
)
from pomlia_hpc.serve.fingerprint import STATS_KIND
from pomlia_hpc.serve.records import REQUEST_REASONS, TRANSPORT_REASONS
from pomlia_hpc.serve.reference import Reference

MIN_VECTORS = 10
MIN_LABELS = 30
PERFORMANCE_SHARE = 0.75
#: Reference vectors used by the input tests at most (a seeded subset): the MMD's kernel
#: matrix is (reference + window)², and 1,000 reference vectors already make the reference
#: side's noise small next to a window of a few hundred.
MAX_REFERENCE = 1000
#: An image whose per-channel standard deviation is below this (pixels in [0, 1]) counts as
#: near-constant (blank, saturated or a test pattern).
NEAR_CONSTANT_STD = 0.01


@dataclass
class CheckOutcome:
    """The tests (with their alpha weights and Holm decisions), the alarm and the notes."""

    tests: list[CheckResult]
    alarm: bool
    performance: dict[str, Any] | None
    quality: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: Arrays for the plots (not in the JSON): standardised reference / window sample.
    reference_vectors: np.ndarray | None = None
    window_vectors: np.ndarray | None = None

    def least_typical(self, k: int = 16) -> list[tuple[int, float]]:
        """(row of the window sample, distance to its nearest reference vector) of the ``k``
        window fingerprints farthest from every reference fingerprint, farthest first."""
        rv, wv = self.reference_vectors, self.window_vectors
        if rv is None or wv is None or not len(wv):
            return []
        d2 = (wv * wv).sum(1)[:, None] + (rv * rv).sum(1)[None, :] - 2.0 * (wv @ rv.T)
        nearest = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        order = np.argsort(-nearest)[:k]
        return [(int(i), float(nearest[i])) for i in order]


def _labels_as_index(values: list[Any]) -> np.ndarray:
    return np.asarray([v if isinstance(v, int) else -1 for v in values], dtype=np.int64)


def _performance(
    win: LogWindow, ref: Reference, metric: str, alpha: float
) -> tuple[CheckResult | None, list[CheckResult], dict[str, Any], list[str]]:
    """The performance test on the window's labels in the task's ``metric`` (None without
    labels), the tests only reported beside it (accuracy, when the metric is another), the
    report's ``performance`` and notes. ``alpha``: the level the test's share is held to."""
    pairs = [(p, t) for p, t, _ in win.feedback]
    join = win.labels
    info: dict[str, Any] = {
        # Labels that arrived in the window and are tested (monitor/labels.py), of which
        # those of predictions made outside it (before it, mostly: labels come late).
        "labels": len(pairs),
        "labels_outside_window": join.outside_window,
        # Tested labels per prediction of the window (not the share of its predictions
        # labelled: some of its labels come in later windows).
        "coverage": len(pairs) / win.n_predictions if win.n_predictions else 0.0,
        # Not tested: labels naming a prediction not in the log within the look-back ...
        "unmatched_feedback": join.unknown,
        # ... of another model or version's prediction, by "model version" ...
        "labels_other_model": sum(join.other_model.values()),
        "labels_other_model_by_version": dict(join.other_model.most_common(5)),
        # ... replacements of labels that an earlier window tested ...
        "labels_corrected": join.corrected,
        # ... and labels that name no class of the model (a label_index out of its range).
        "labels_out_of_range": join.out_of_range,
        "label_lookback_s": win.label_lookback_s,
        # The metric the performance test compared: the task's (accuracy is reported anyway);
        # None when no label was tested, as nothing was compared (it said "acc" for an AUC
        # task then). Every reader looks at it only where ``labels`` is positive.
        "metric": None,
    }
    if not pairs:
        return None, [], info, []
    info["metric"] = "acc"
    if ref.task_type == "multi-label":
        # The task's ACC (MedMNIST's): label-wise, not exact match over all labels, which a
        # 14-label model almost never gets (accuracy 0 against a reference of 0: no test).
        n_labels = len(ref.label_names)
        scores = np.asarray([1.0 - len(_as_set(p) ^ _as_set(t)) / n_labels for p, t in pairs])
        res = labelwise_performance_test(scores, ref.image_scores, n_labels)
    else:
        correct = sum(1 for p, t in pairs if p == t)
        res = performance_test(correct, len(pairs), round(ref.accuracy * ref.n), ref.n)
    info.update(res.detail, accuracy=res.statistic, reference_split=ref.split)
    if metric not in RESAMPLED_METRICS:
        return res, [], info, []
    if metric == "auc" and ref.probabilities is None:
        # A reference written before references kept the model's probabilities.
        return (
            res,
            [],
            info,
            [
                f"the task's metric is auc, but the monitoring reference ({ref.source}) keeps no "
                "probabilities (written by an older version): accuracy is tested instead; "
                f"rewrite the reference to test AUC: pomlia monitor reference {ref.model}"
            ],
        )
    predicted, truth = [p for p, _ in pairs], [t for _, t in pairs]
    probs = join.probabilities if metric == "auc" else None
    tested = metric_performance_test(metric, ref, predicted, truth, probs, alpha=alpha)
    info.update(metric=metric, metric_test={**tested.detail, "p_value": tested.p_value})
    note = f"the task's metric is {metric}: its test decides; accuracy is reported, not tested"
    if few := tested.detail["few_image_classes"]:
        shown = ", ".join(f"{c} ({k})" for c, k in few.items())
        note += (
            f"; classes entering the window's {metric} from fewer than {FEW_CLASS_IMAGES} labels, "
            f"each with full weight: {shown}"
        )
    if not tested.detail["resamples"]:
        # Feedback of one class only (users report the misses): accuracy still sees a drop.
        info.update(metric="acc")
        note = (
            f"{metric} is undefined on the window's labels or the reference (a class without "
            f"both positive and negative images): not tested; accuracy is tested instead"
        )
        return res, [tested], info, [note]
    return tested, [res], info, [note]


def _as_set(labels: Any) -> set[Any]:
    """A multi-label answer or label (a list of indices; one index, or None) as a set."""
    if labels is None:
        return set()
    return set(labels) if isinstance(labels, list) else {labels}


def _quality(win: LogWindow, ref: Reference, vectors: np.ndarray) -> dict[str, Any]:
    # A timeout says nothing about the data, nor does a request the HTTP layer refused
    # before reading any file in it (a body over the upload limit, a malformed multipart
    # body): each counted apart, not in the refused share.
    apart = TRANSPORT_REASONS | REQUEST_REASONS
    refused = Counter({k: n for k, n in win.rejections.items() if k not in apart})
    failed = Counter({k: n for k, n in win.rejections.items() if k in TRANSPORT_REASONS})
    bad_requests = Counter({k: n for k, n in win.rejections.items() if k in REQUEST_REASONS})
    rejected, n_failed = sum(refused.values()), sum(failed.values())
    n_bad_requests = sum(bad_requests.values())
    # Requests over requests: a refused upload is one request, and so is an answered batch of
    # many images (counting its images would hide a batch client's refusals).
    total = win.n_requests + rejected
    q: dict[str, Any] = {
        "requests": total + n_failed + n_bad_requests,
        "answered_requests": win.n_requests,
        "predictions": win.n_predictions,
        "rejected": rejected,
        "rejected_share": rejected / total if total else 0.0,
        "rejected_share_unit": "request",  # per image in reports of format /1
        "rejections_by_reason": dict(refused.most_common()),
        "transport_failures": n_failed,
        "transport_failures_by_reason": dict(failed.most_common()),
        "request_refusals": n_bad_requests,
        "request_refusals_by_reason": dict(bad_requests.most_common()),
        "bad_fingerprints": win.bad_fingerprints,
    }
    warnings: list[str] = []
    if ref.fingerprint_kind == STATS_KIND and len(vectors):
        # stats-thumb-v1 layout: C means, then C standard deviations, then the thumbnail.
        c = len(ref.fingerprints[0]) // 66
        std = vectors[:, c : 2 * c].max(axis=1)
        share = float(np.mean(std < NEAR_CONSTANT_STD))
        ref_share = float(np.mean(ref.fingerprints[:, c : 2 * c].max(axis=1) < NEAR_CONSTANT_STD))
        q["near_constant_share"] = share
        q["near_constant_share_reference"] = ref_share
        if share > max(0.01, 2 * ref_share):
            warnings.append(
                f"{share:.1%} of the sampled inputs are near-constant (reference {ref_share:.1%})"
            )
    else:
        q["near_constant_share"] = None
    if total and rejected / total > 0.05:
        # Every reason the server gives (a few), so the counts add up to the refusals; a log
        # of another writer's may hold any number.
        top = ", ".join(f"{k} {v}" for k, v in refused.most_common(8))
        if len(refused) > 8:
            rest = sum(v for _, v in refused.most_common()[8:])
            top += f", {rest} more of {len(refused) - 8} other reason(s)"
        warnings.append(f"{rejected / total:.1%} of requests were refused ({top})")
    if n_failed and n_failed / (total + n_failed) > 0.05:
        warnings.append(
            f"{n_failed / (total + n_failed):.1%} of requests failed in transport "
            f"({', '.join(f'{k} {v}' for k, v in failed.most_common())}: the body did not "
            "arrive in time; a client or network problem, not the data)"
        )
    if win.bad_fingerprints:
        warnings.append(
            f"{win.bad_fingerprints} predictions logged a fingerprint of another kind or "
            f"length than the reference's ({ref.fingerprint_kind}); they are not in the "
            "input-drift tests"
        )
    q["warnings"] = warnings
    return q


def planned_tests(win: LogWindow, ref: Reference, metric: str = "acc") -> list[str]:
    """The tests :func:`run_checks` runs on ``win``, by name, for the line said before them
    (the input-drift ones need :data:`MIN_VECTORS` fingerprints on both sides)."""
    names = []
    if min(len(ref.fingerprints), len(win.vectors)) >= MIN_VECTORS:
        names += ["MMD", "KS", "classifier"]
    if win.n_predictions:
        names += ["confidence"] if ref.task_type == "multi-label" else ["labels", "confidence"]
    if win.feedback:
        # An AUC task's reference of an older version keeps no probabilities: accuracy alone.
        no_auc = metric == "auc" and ref.probabilities is None
        names.append("accuracy" if metric == "acc" or no_auc else f"{metric} and accuracy")
    return names


def run_checks(
    win: LogWindow,
    ref: Reference,
    *,
    alpha: float = 0.05,
    n_perm: int = N_PERM,
    seed: int = 0,
    metric: str = "acc",
) -> CheckOutcome:
    """Every applicable test of ``win`` against ``ref``, combined by weighted Holm;
    ``metric``: the task's, which the performance test compares (:mod:`.metrictest`)."""
    notes: list[str] = []
    dim = ref.fingerprints.shape[1]
    vectors = win.fingerprint_matrix(dim)
    drift: list[CheckResult] = []
    ref_vec = ref.fingerprints
    if len(ref_vec) > MAX_REFERENCE:
        # A different subset for each window start (reproducible for a given window): a fixed
        # subset would be one fixed sample of MAX_REFERENCE, whose sampling error every night's
        # window shares; varying it, nights share only the full reference's (smaller) error.
        start: datetime | None = win.since
        key = [seed] if start is None else [seed, int(start.timestamp())]
        idx = np.random.default_rng(key).choice(len(ref_vec), MAX_REFERENCE, replace=False)
        ref_vec = ref_vec[np.sort(idx)]
    if len(ref_vec) < MIN_VECTORS:
        # The MMD's bootstrap null resamples the reference: from 2 fingerprints every
        # resampled window repeats them, so any real window looks drifted (measured: an alarm
        # on every no-drift window at 2, on 22% at 5, at about alpha from 10 on).
        notes.append(
            f"input-drift tests skipped: the reference ({ref.source}) holds {len(ref_vec)} "
            f"fingerprint(s), at least {MIN_VECTORS} needed (pomlia monitor reference "
            f"{ref.model} --split SPLIT or --data DATASET makes a larger one)"
        )
    elif len(vectors) >= MIN_VECTORS:
        drift.append(mmd_test(ref_vec, vectors, n_perm=n_perm, seed=seed))
        drift.append(ks_test(ref_vec, vectors))
        # The whole reference: the classifier's held-out reference half must be the same
        # for every window (see classifier_test), not a half of this window's subset.
        drift.append(classifier_test(ref.fingerprints, vectors, seed=seed))
        if win.n_predictions > len(vectors):
            notes.append(
                f"input-drift tests use a uniform random sample of {len(vectors)} of the "
                f"window's {win.n_predictions} fingerprints"
            )
    else:
        notes.append(
            f"input-drift tests skipped: {len(vectors)} fingerprints in the window, "
            f"at least {MIN_VECTORS} needed"
        )
    if win.n_predictions:
        if ref.task_type != "multi-label":
            drift.append(
                label_test(ref.pred_index, _labels_as_index(win.pred_index), len(ref.label_names))
            )
        drift.append(confidence_test(ref.confidence, np.asarray(win.confidence, np.float64)))
    perf, reported, perf_info, perf_notes = _performance(
        win, ref, metric, alpha * PERFORMANCE_SHARE
    )
    notes += perf_notes
    tests = list(drift)
    drift_share = 1.0
    if perf is not None and perf_info["labels"] >= MIN_LABELS:
        perf.weight = PERFORMANCE_SHARE
        drift_share = 1.0 - PERFORMANCE_SHARE
        tests.append(perf)
    elif perf is not None:
        perf.weight = 0.0
        tests.append(perf)
        notes.append(
            f"{perf.name} from {perf_info['labels']} labels is reported but not tested "
            f"(at least {MIN_LABELS} labels needed)"
        )
    for r in reported:
        r.weight = 0.0  # shown beside the task's metric, which alone is tested
        tests.append(r)
    for t in drift:
        t.weight = drift_share / len(drift)
    alarm = combine(tests, alpha) if tests else False
    rv, wv = (None, None)
    if len(vectors):
        mu, sd = ref_vec.mean(axis=0), ref_vec.std(axis=0)
        sd = np.where(sd > 1e-6, sd, 1.0)
        rv, wv = (ref_vec - mu) / sd, (vectors - mu) / sd
    return CheckOutcome(
        tests=tests,
        alarm=alarm,
        performance=perf_info if win.feedback or win.n_predictions else None,
        quality=_quality(win, ref, vectors),
        notes=notes,
        reference_vectors=rv,
        window_vectors=wv,
    )
