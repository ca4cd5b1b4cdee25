"""pomlia-hpc: MLOps for scarce biomedical image data on Slurm GPU clusters."""

__version__ = "0.1.0"
