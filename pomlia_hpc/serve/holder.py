"""The model a server answers with, and hot swap to the bundle a followed link names.

A :class:`ModelHolder` owns the current :class:`~pomlia_hpc.serve.predictor.Predictor` (model
runtime, batcher, prediction log). A server started on a link (a deployment slot's
``current``, see :mod:`pomlia_hpc.serve.slots`) moves to the bundle the link names when it
changes (checked every ``watch_interval_s``) or on request (:meth:`ModelHolder.reload`). The
new bundle's model is loaded beside the old one, new requests go to it, and the old batcher
answers what it holds; both write to the same prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import make_private_dirs
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.decode import RequestError
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.feedgate import FeedbackGate, append_durably
from pomlia_hpc.serve.fingerprint import FingerprintFn, bundle_fingerprint
from pomlia_hpc.serve.inbox import Inbox, inputs_dir
from pomlia_hpc.serve.issued import IssuedIds, card_time, feedback_refusal
from pomlia_hpc.serve.metrics import ServerMetrics
from pomlia_hpc.serve.peers import PeerLogs, PeerReader
from pomlia_hpc.serve.predictor import Predictor
from pomlia_hpc.serve.predlog import PredictionLog
from pomlia_hpc.serve.records import FeedbackLine, to_line
from pomlia_hpc.serve.runtime import load_runtime
from pomlia_hpc.serve.slots import incompatible

log = logging.getLogger("pomlia.serve")


class ModelHolder:
    """The predictor of a server from :meth:`start` to :meth:`stop`, swapped on :meth:`reload`.

    ``follow``: the link ``bundle`` was found through (None: no hot swap);
    ``fingerprint``: the input fingerprint function (None: the bundle's own or a default)."""

    def __init__(
        self,
        bundle: ExportedBundle,
        config: ServeConfig,
        log_dir: Path,
        metrics: ServerMetrics,
        *,
        fingerprint: FingerprintFn | None = None,
        follow: Path | None = None,
    ) -> None:
        self.bundle = bundle
        self.config = config
        self.log_dir = log_dir
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.follow = follow
        self.predictor: Predictor | None = None
        self.draining = False
        self.issued = IssuedIds(config.feedback_window)
        self.peers: PeerLogs | None = None  # set by start()
        self._reader: PeerReader | None = None
        self.gate = FeedbackGate(log_dir, config.deployment_id)
        # A link target refused once, not every interval: with what its folder was then
        # (:func:`bundle_state`), so that a rebuild at the same path is tried again.
        self._refused: tuple[Path, tuple[int, ...] | None] | None = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    def current(self) -> Predictor:
        """The predictor that answers now; 503 while starting, failing or shutting down."""
        p = self.predictor
        if p is not None and not self.draining and (failure := p.log.failure) is not None:
            # say why: a full disk under the log is the operator's to fix, not a crash
            raise RequestError(
                503, f"the model is not ready: {failure}; predictions are refused until it can be"
            )
        if p is None or self.draining or not p.ready:
            raise RequestError(503, "the model is not ready (starting, failing or shutting down)")
        return p

    def card_bundle(self) -> ExportedBundle:
        """The bundle whose card the server shows (the current one, else the first)."""
        return self.predictor.bundle if self.predictor is not None else self.bundle

    def _make_predictor(self, b: ExportedBundle, plog: PredictionLog) -> Predictor:
        config = self.config
        runtime = load_runtime(b, config.backend, config.threads)
        fp, kind = self.fingerprint, "custom"
        if fp is None:
            fp, kind = bundle_fingerprint(b.encoder_file)
        pred = Predictor(
            b,
            runtime,
            plog,
            self.metrics,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000.0,
            fingerprint=fp,
            fingerprint_kind=kind,
            deployment_id=config.deployment_id,
            keep_inputs=config.keep_inputs,
            issued=self.issued,
        )
        log.info("model %s (%s) on %s/%s ready", b.name, b.version, runtime.backend, runtime.device)
        return pred

    async def start(self, on_ready: Callable[[], Any] | None = None) -> None:
        """Open the log, load the model, start watching the link; then call ``on_ready()``."""
        config = self.config
        inbox = None
        if config.keep_inputs:
            inbox = Inbox(
                inputs_dir(self.log_dir),
                quota_bytes=config.inputs_quota_bytes,
                retention_s=config.inputs_retention_days * 86400.0,
                fsync=config.log_fsync,
            )
        # Before the folder is read: what other servers of the deployment append from now on
        # is read on demand (a feedback id this server does not know, see serve.peers).
        created = self.log_start()
        await asyncio.to_thread(make_private_dirs, self.log_dir)
        await asyncio.to_thread(self.gate.open)
        self.peers = peers = await asyncio.to_thread(
            PeerLogs.snapshot, self.log_dir, config.deployment_id, created=created
        )
        self.issued = issued = await asyncio.to_thread(
            IssuedIds.from_log,
            self.log_dir,
            config.deployment_id,
            config.feedback_window,
            created=created,
        )
        plog = PredictionLog(
            self.log_dir,
            fsync=config.log_fsync,
            sidecar=inbox,
            retention_s=config.log_retention_s,
            keep_after=issued.oldest_time,
            retry_s=config.log_retry_s,
        )
        peers.own = plog.stem
        self.gate.on_turn = functools.partial(peers.catch_up, issued)
        try:
            self.predictor = await asyncio.to_thread(self._make_predictor, self.bundle, plog)
        except BaseException:
            # No stop() follows a start that failed (the lifespan ends there): the log's
            # writer thread and the lock file go now, not with the process.
            await asyncio.to_thread(plog.close)
            await self.gate.close()
            raise
        if config.peer_read_interval_s > 0:  # once the model loaded: nothing left to stop
            self._reader = PeerReader(peers, issued, config.peer_read_interval_s)
            self._reader.start()
        if self.follow is not None and config.watch_interval_s > 0:
            self._watcher = asyncio.create_task(self._watch(self.follow))
        if on_ready is not None:
            on_ready()

    def log_start(self) -> float | None:
        """The earliest a record of this server's deployment can have been logged (epoch s),
        so start-up opens no older file; None when unknown. The registry's creation time of
        the deployment when `pomlia serve` looked it up; else, for a server on one bundle (no
        link to follow), when the bundle's checkpoint was made (its card's ``created_at``):
        no deployment of a bundle predates it, so a bundle directory served without a
        registry (``serve.sbatch`` in the image) no longer reads back through the whole folder
        when its window does not fill (a new deployment beside a month of another one's
        log). A server on a link may log for the link's earlier bundles: no bound then."""
        created = self.config.deployment_created
        if created is not None:
            return created.timestamp()
        if self.follow is not None:
            return None
        return card_time(self.bundle.card)

    async def accept_feedback(
        self,
        pid: str,
        *,
        replaces: bool,
        record: Callable[[int], FeedbackLine],
        plog: PredictionLog,
    ) -> FeedbackLine:
        """Judge a feedback for prediction ``pid`` and log ``record(revision)`` durably (the
        label's revision: 1 for the first, one more than the labels known before), or
        refuse it (404 unknown id, 409 labelled without ``replaces``, 503 not written). Done
        in the deployment's feedback turn (:mod:`~pomlia_hpc.serve.feedgate`), so of two
        servers given the same id at once exactly one accepts it. Another server of the
        deployment may have answered ``pid``, or labelled it, after this one read the log (a
        restart or a switch: both run for a while): what their files gained since is read
        as the turn begins (:mod:`~pomlia_hpc.serve.peers`)."""

        async def section() -> FeedbackLine:  # the peers were read as the turn began
            issued = self.issued
            # Counted under the deployment's lock, with the other servers' labels read as the
            # turn began: the revision orders a prediction's labels, whatever the clocks say.
            had = issued.revision(pid)
            refusal = feedback_refusal(issued.claim(pid, replaces=replaces), pid)
            if refusal is not None:
                raise refusal
            line = record(had + 1)
            try:
                await append_durably(plog, to_line(line))
            except RequestError:  # not written: the id may be labelled again
                issued.release(pid, revision=had)
                raise
            return line

        return await self.gate.run(section)

    async def stop(self) -> None:
        """Stop watching, answer what is still queued and write every record."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.draining = True
        if self._reader is not None:
            await asyncio.to_thread(self._reader.stop)
        # Uvicorn has already waited for in-flight requests; this answers anything still
        # queued and writes every record before the process exits.
        async with self._lock:
            if self.predictor is not None:
                await asyncio.to_thread(self.predictor.close)
        await self.gate.close()

    async def reload(self) -> dict[str, Any]:
        """Swap to the bundle ``follow`` names now (no-op if it is the one served)."""
        follow = self.follow
        if follow is None:
            raise RequestError(
                409,
                # Started on a model name or a bundle directory: the holder cannot tell
                # which, and either way no link names a newer bundle.
                "this server follows no deployment link (it was not started on a slot or a link to "
                "a bundle): nothing to reload; serve a slot (`pomlia serve SLOT`) to use "
                "hot swap",
            )
        async with self._lock:
            old = self.current()
            target = Path(os.path.realpath(follow))
            same = {"model": old.bundle.name, "model_version": old.bundle.version}
            if target == old.bundle.root:
                return {"reloaded": False, **same}
            try:
                new_bundle = await asyncio.to_thread(ExportedBundle.open, target)
                # The check `pomlia serve` makes at start (files against the card's SHA-256,
                # the card against card.sha256): a damaged or edited bundle must not be
                # swapped in where it would not be started on.
                await asyncio.to_thread(new_bundle.check_integrity)
            except PomliaError as exc:
                keeps = f"the server keeps {old.bundle.name} ({old.bundle.version})"
                raise RequestError(409, f"link {follow} names {target}: {exc}; {keeps}") from exc
            if problem := incompatible(old.bundle, new_bundle):
                raise RequestError(409, f"{target}: {problem}; the server keeps {old.bundle.name}")
            new = await asyncio.to_thread(self._make_predictor, new_bundle, old.log)
            self.predictor = new
            # New requests already go to ``new``; the old batcher answers what it holds.
            await asyncio.to_thread(old.close, close_log=False)
            self.metrics.swaps.inc()
            log.info(
                "hot swap: %s (%s) -> %s (%s)",
                old.bundle.name,
                old.bundle.version,
                new.bundle.name,
                new.bundle.version,
            )
            return {
                "reloaded": True,
                "model": new.bundle.name,
                "model_version": new.bundle.version,
                "previous_model": old.bundle.name,
                "previous_version": old.bundle.version,
            }

    async def _watch(self, link: Path) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval_s)
            target = Path(os.path.realpath(link))
            pred = self.predictor
            seen = (target, bundle_state(target))
            if pred is None or target == pred.bundle.root or seen == self._refused:
                continue
            try:
                await self.reload()
            except RequestError as exc:
                self._refused = seen  # said once, not every interval
                log.error("hot swap refused: %s", exc.message)
            except Exception:
                log.exception("hot swap to %s failed; still serving %s", target, pred.bundle.name)
                self._refused = seen


def bundle_state(folder: Path) -> tuple[int, ...] | None:
    """What tells a bundle folder ``folder`` from one rebuilt at the same path: the inode and
    change times (ns) of the folder and of its ``card.json`` (``pomlia model export`` replaces
    a damaged bundle whole; a card edited back in place changes its own). None where neither
    can be read (a missing folder)."""
    out: list[int] = []
    for path in (folder, folder / "card.json"):
        try:
            st = path.stat()
        except OSError:
            continue
        out += [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    return tuple(out) or None
