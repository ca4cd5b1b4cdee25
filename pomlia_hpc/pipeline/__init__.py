"""pipeline room of pomlia-hpc: chains the rooms below it (data, fingerprints, AutoML, serving,
monitoring) into one loop from a YAML file: stages as cluster jobs with dependencies, skipping
what exists and resuming what failed (:mod:`pomlia_hpc.pipeline.runner`). Its place in the
layers: docs/ARCHITECTURE.md."""
