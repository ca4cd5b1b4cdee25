"""data room of pomlia-hpc (see DESIGN.md)."""
