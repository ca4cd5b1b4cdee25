"""A static, self-contained HTML report of a workspace (``pomlia report``)."""

from pomlia_hpc.report.build import build_report

__all__ = ["build_report"]
