"""The AutoML room: studies (SMAC-Hyperband or random search by ask/tell) whose trials are
cluster jobs, the DeepSpeed training engine, task metrics and the run records.

Its place among the rooms and the files and rows a study leaves: docs/ARCHITECTURE.md.
"""
