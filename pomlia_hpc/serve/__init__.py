"""Serving: export a trained classifier, serve it over REST, package it for Apptainer/Slurm.

The checkpoint format, model cards and the model catalog live in :mod:`pomlia_hpc.models`.

Modules, in the order a model goes through them:

* ``export``     ONNX + torch.export program + model card, checked against PyTorch
* ``exported``   reading an exported bundle (no torch import: fast server start)
* ``runtime``    onnxruntime on CPU, the torch.export program on GPU; preprocessing
* ``decode``     uploads (PNG, JPEG, TIFF, NPY) to arrays, every bad input a 4xx
* ``batching``   dynamic batching on one model thread
* ``predictor``  batch -> model -> outputs -> durable log -> answer
* ``predlog``    the append-only, group-committed prediction/feedback log (``read_records``)
* ``records``    its lines as strict models (prediction, feedback, rejection)
* ``issued``, ``peers``, ``feedgate``  which ids take feedback; what the deployment's other
  servers logged; one label per id across them (a lock in the log folder)
* ``fingerprint``  pluggable input fingerprints for the log (encoder, or explicit statistics)
* ``app``, ``metrics``, ``security``, ``config``, ``server``  the FastAPI app and its process
* ``deploy``, ``smoke``, ``local``, ``demo``  Apptainer/sbatch files, checks and helpers
"""
