"""The monitor room: reads a served model's prediction log for a time window, tests it against
the reference recorded at export (drift, prediction shift, performance on feedback), writes a
JSON + HTML report and records it.

Modules: ``reference``, ``logread``, ``stats``, ``checks``, ``run``, ``reportdoc``, ``runlock``,
``html``, ``history``.
Layers, artifacts and crash protocols: docs/ARCHITECTURE.md.
"""
