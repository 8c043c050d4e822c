"""The JSON schema of a model's ``config.json``, checked before any field is used.

``config.json`` is read by ``emseg info``, prediction, resume and the Fiji commands, and may
come from someone else or be edited by hand. Each reader used to trust the field types (a
``"training": true`` or ``"classes": {"a": 1}`` then surfaced as a traceback deep inside).
One schema, checked with :mod:`jsonschema` at the boundary, turns every such file into one
:class:`~fiji_emseg.errors.ModelFileError` that names the field. Value ranges that depend on
each other (depth vs z_poolings, group counts) stay in the dataclasses' own checks.
"""

from __future__ import annotations

from typing import Any

from ...errors import ModelFileError

__all__ = ["MODEL_INFO_SCHEMA", "validate_model_info"]

_INT = {"type": "integer"}
_NUM = {"type": "number"}
_OPT_NUM = {"type": ["number", "null"]}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}

_MODEL = {
    "type": "object",
    "properties": {
        "classes": {"type": "array", "items": _STR, "minItems": 1},
        "dims": {"enum": [2, 3]},
        "depth": {**_INT, "minimum": 1, "maximum": 8},
        "filters": {**_INT, "minimum": 1, "maximum": 4096},
        "blocks_per_level": {**_INT, "minimum": 1, "maximum": 64},
        "convs_per_block": {**_INT, "minimum": 1, "maximum": 64},
        "residual": _BOOL,
        "norm": {"enum": ["batch", "group", "instance", "none"]},
        "groups": {**_INT, "minimum": 1},
        "dropout": {**_NUM, "minimum": 0, "exclusiveMaximum": 1},
        "kernel_size": {**_INT, "minimum": 1, "maximum": 15},
        "output": {"enum": ["sigmoid", "softmax"]},
        "in_channels": {**_INT, "minimum": 1, "maximum": 64},
        "z_poolings": {"type": ["integer", "null"], "minimum": 0},
        "slice_context": {**_INT, "minimum": 0, "maximum": 3},
        "architecture": _STR,
        "extra": {"type": "object"},
    },
    "required": ["classes"],
}

_NORMALIZATION = {
    "type": ["object", "null"],
    "properties": {
        "method": {"enum": ["percentile", "minmax", "fixed", "none"]},
        "low": _NUM,
        "high": _NUM,
        "max_voxels": {**_INT, "minimum": 1},
        "max_slices": {**_INT, "minimum": 1},
    },
}

_RECEPTIVE_FIELD = {
    "type": ["object", "null"],
    "properties": {
        "radius": {"type": "array", "items": {**_INT, "minimum": 0}, "minItems": 3, "maxItems": 3},
        "global_context": _BOOL,
        "method": _STR,
    },
    "required": ["radius"],
}

_BEST_METRICS = {
    "type": ["object", "null"],
    "properties": {
        "epoch": {"type": ["integer", "null"]},
        "loss": _OPT_NUM,
        "val_loss": _OPT_NUM,
        "val_f1": {"type": ["object", "null"], "additionalProperties": _OPT_NUM},
    },
}

_TRAINING = {
    "type": ["object", "null"],
    "properties": {
        "status": _STR,
        "config": {"type": ["object", "null"]},
        "device": _STR,
        "epochs_run": {**_INT, "minimum": 0},
        "best_epoch": {"type": ["integer", "null"], "minimum": 0},
        "best_metrics": _BEST_METRICS,
        "monitor": _STR,
        "data": {"type": ["object", "null"]},
        "duration_s": _NUM,
        "median_step_s": {**_NUM, "exclusiveMinimum": 0},
        "thresholds": {"type": ["object", "null"], "additionalProperties": {**_NUM, "minimum": 0, "maximum": 1}},
        "checkpoint_sha256": {"type": ["array", "null"], "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    },
}

#: The schema of ``config.json`` (format ``fiji-emseg-model``, version 1).
MODEL_INFO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "format": _STR,
        "format_version": _INT,
        "name": _STR,
        "created": _STR,
        "software": {"type": ["object", "null"], "additionalProperties": _STR},
        "model": _MODEL,
        "normalization": _NORMALIZATION,
        "receptive_field": _RECEPTIVE_FIELD,
        "weights": _STR,
        "training": _TRAINING,
    },
    "required": ["format", "model"],
}


def _validator_class() -> Any:
    """Draft 2020-12, except that an integer must be written as one: JSON Schema accepts 3.0 as
    an integer, but a layer count of 3.0 reaches torch as a float and fails deep inside."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def validate_model_info(d: Any, source: str) -> None:
    """Raise one :class:`ModelFileError` line naming the first field of the wrong type or range."""
    validator = _validator_class()(MODEL_INFO_SCHEMA)
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(d))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    raise ModelFileError(
        f"{source} is damaged or was edited by hand: field {where!r} is invalid ({_short(error.message)}); "
        "copy the model folder again, or retrain the model")


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
