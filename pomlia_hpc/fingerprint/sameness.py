"""Whether a run of a named encoder asks for the training that name already holds.

``pomlia fingerprint train -n NAME`` reuses a finished training of NAME and resumes an
unfinished one, but only under the same datasets and options: anything else would return (or
continue) weights that are not what was asked for. Such a run is refused with one message naming
the first setting that differs in words (``epochs``, ``image size``), not as an internal key.
A pipeline retrains instead, but only the encoder its own stage trained
(:mod:`pomlia_hpc.fingerprint.staging`).
"""

from __future__ import annotations

from typing import Any

from pomlia_hpc.errors import InputError

#: Words for the settings of a training record (``{"config": TrainConfig, "datasets": ...}``).
SETTING_WORDS = {
    "datasets": "datasets",
    "config.encoder.latent_dim": "latent size",
    "config.encoder.image_size": "image size (px)",
    "config.encoder.stem": "stem",
    "config.epochs": "epochs",
    "config.batch_size": "batch size",
    "config.lr": "learning rate",
    "config.seed": "seed",
    "config.split": "training split",
    "config.max_images_per_dataset": "images per dataset at most",
    "config.processes": "processes",
    "config.num_workers": "loader workers",
    "config.precision": "precision",
    "config.zero_stage": "ZeRO stage",
    "config.objective": "objective",
    "config.holdout": "held-out fraction",
    "config.patience": "patience (epochs)",
    "config.lr_schedule": "learning-rate schedule",
}


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def shown(value: Any) -> str:
    """A setting's value in a message: ``none``, a list comma-separated."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting (in words) whose value differs between two training records, with
    both values; None when they ask for the same training."""
    before, now = _flatten(old), _flatten(new)
    for key in sorted(before.keys() | now.keys()):
        if before.get(key) != now.get(key):
            words = SETTING_WORDS.get(key, key.rsplit(".", 1)[-1].replace("_", " "))
            return words, before.get(key), now.get(key)
    return None


def check_same_training(name: str, state: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse a run of encoder ``name`` that asks for other datasets or options than the
    training it would reuse (``state`` "trained") or resume ("started")."""
    diff = first_difference(old, new)
    if diff is None:
        return
    words, before, now = diff
    raise InputError(
        f"encoder '{name}' was {state} with {words} {shown(before)} but this run asks for "
        f"{shown(now)}: expected the same datasets and options as before to "
        f"{'reuse' if state == 'trained' else 'resume'} it",
        hint="choose another --name for a new encoder",
    )
