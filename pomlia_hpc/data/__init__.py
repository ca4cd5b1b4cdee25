"""The data room: datasets in, as versioned Zarr stores (layers: docs/ARCHITECTURE.md).

Modules, in the order data flows through them:

- :mod:`.medmnist_info`  MedMNIST's INFO table (flags, sizes, file names, md5s) without torch
- :mod:`.sources`        MedMNIST / npz / image folder / HDF5 readers, validated up front
- :mod:`.npzstream`      row-batch reads from inside an npz (memory = one batch)
- :mod:`.writer`         chunk assembly, compression, chunk hashes (worker threads)
- :mod:`.versioning`     content-hash version ids, atomic publish, registry rows
- :mod:`.explicit_fingerprint`  the human-readable dataset fingerprint (dask, chunk by chunk)
- :mod:`.store`          the stable reader API: ``open_version``, ``DatasetStore``
- :mod:`.api`            ``ingest``, ``list_versions``, ``show``, ``verify``
- :mod:`.leakage`        the duplicate warnings of ``data add`` and ``task add`` (train copies
                         in val/test, conflicting labels)
- :mod:`.grid`           sample-grid PNGs
- :mod:`.synth`          the 12 MedMNIST look-alikes (offline demo and test data)
"""
