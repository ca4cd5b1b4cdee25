"""The models room: what a trained classifier is, how it is stored, and the catalog of them.

Used by AutoML (which trains and promotes models), serving (which exports and serves them) and
the rooms above; it imports none of them. Modules:

* ``archs``       architecture names (no torch)
* ``nets``        :func:`~pomlia_hpc.models.nets.build_classifier`: the networks
* ``card``        :class:`ClassifierMeta`, :class:`Preprocessing`, the model card (no torch)
* ``checkpoint``  the checkpoint file: ``save_classifier``, ``load_classifier``, ``read_meta``
* ``catalog``     registry ``Model`` rows: register, resolve, promote a run's checkpoint
* ``taskmetric``  the metric a model is monitored and gated by (no torch)

This package's ``__init__`` imports nothing heavy, so ``import pomlia_hpc.models.archs`` stays
torch-free. Layers and rules: ``docs/ARCHITECTURE.md``.
"""
