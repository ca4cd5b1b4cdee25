"""pipeline room of pomlia-hpc: chains the rooms below it (data, fingerprints, AutoML, serving,
monitoring) into one loop. Its place in the layers: docs/ARCHITECTURE.md."""
