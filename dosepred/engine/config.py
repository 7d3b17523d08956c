"""Training configuration: YAML/JSON files, ``a.b=value`` overrides, and the resolved config of a run."""

from __future__ import annotations

import copy
import difflib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from dosepred.io import safe_yaml

#: The working grids a model may train and predict on (OpenKBP's is 128³).
MIN_RESOLUTION, MAX_RESOLUTION = 16, 256

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",  # auto: cuda when available
    "amp": True,  # bf16 autocast + channels-last where the device computes bf16 natively (dosepred.devices)
    "init": None,  # warm start: a model name or folder whose weights the network starts from
    "data": {
        "train": "data/pack/train",  # a folder of patients: pack files, OpenKBP CSV or NIfTI folders
        "validation": "data/pack/validation",
        "resolution": 64,  # working grid edge in voxels; 128 is OpenKBP's full grid
        "augment": True,  # mirror (parotids swapped), small rotations and shifts, on the training device
        "beam_rotation": 0.0,  # probability of a rotation about the long axis by a multiple of the beam spacing
        "beam_angles": None,  # gantry angles (deg) for the beam-geometry channels; None: no such channels
        "max_validation_patients": None,
        "workers": 0,  # threads that read the patients at the start (0: one after another)
    },
    "network": {"name": "unet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2},
    "optim": {"steps": 2000, "batch_size": 2, "lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 50,
              "min_lr_ratio": 0.01,  # the cosine decays to this fraction of lr
              "grad_clip": 1.0,
              "skip_grad_norm": 1.0e4,  # skip a step whose gradient norm is above this (garbage from a kernel)
              "max_minutes": None},  # a wall-clock budget: at its end, validate, export and stop early
    "loss": {"dvh_weight": 0.0},  # weight of the sorted-dose (DVH) L1 beside the masked L1
    "validate_every": 250,
    "checkpoint_every": 250,
    "threads": None,  # torch CPU threads; None: every core
}


#: ``dosepred distill``: the training defaults plus the distillation's own section.
DISTILL_DEFAULTS: dict[str, Any] = {**DEFAULTS, "distill": {
    "teachers": [],  # model names or folders (an ensemble counts as its members); resolution must match
    "truth_weight": 1.0,
    "soft_weight": 1.0,
    "uncertainty_weight": 1.0,
    "detach_uncertainty": False,  # the uncertainty channel learns from the student's last features, gradient stopped
    "adversarial_weight": 0.01,
    "feature_matching": 0.0,
    "teacher_targets": None,  # the teachers' predictions kept for reuse (null: teacher_targets.safetensors in the run)
    "critic_lr": 2e-4,
    "critic": {"name": "patch_critic", "channels": 16, "num_layers_d": 3},
}}

#: The search command's defaults: the same data section, at 32^3, and the search's own settings.
SEARCH_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "threads": None,
    "data": {**DEFAULTS["data"], "resolution": 32},
    "search": {
        "strategy": "lenas",  # lenas, random, kshot, gold or fpnas (dosepred/nas/strategies/)
        "channels": [8, 16, 32, 64],  # the searched U-Net's widths (3 down levels)
        "stem_stride": 1,  # 2: the blocks run at half the input grid, as the full-resolution teachers do
        "supernet_steps": 1500,
        "lr": 2e-3,
        "batch_size": 2,
        "max_sweeps": 3,
        "validation_patients": 8,  # the first N validation patients score the candidates
        "teachers": 3,  # K
        "diversity_weight": 1.0,  # lambda of the selection rule
        "pool": 20,  # teachers come from the best N by estimated score
        "options": {},  # the strategy's own options (see its file in dosepred/nas/strategies/)
    },
}

#: ``dosepred detect train``: the BLC detector on axial slices, through the same training loop.
DETECT_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",  # the only one: the box targets and NMS are CPU code
    "threads": None,
    "data": {"train": "data/pack/train", "slice_step": 2},  # every n-th slice that holds a structure
    "detector": {},  # DetectorConfig's fields (dosepred/detection/network.py); empty: its defaults
    "optim": {**DEFAULTS["optim"], "steps": 1200, "batch_size": 8, "lr": 1e-3, "warmup_steps": 100,
              "min_lr_ratio": 0.0, "grad_clip": 10.0, "skip_grad_norm": None},
    "validate_every": 100,  # a metrics row (mean losses) and an export
    "checkpoint_every": 100,
}

#: ``dosepred fewshot train``: episodic meta-training of a patch encoder, through the same training loop. AdamW
#: without weight decay, no warm-up and a constant rate (min_lr_ratio 1) is Adam at a fixed rate.
FEWSHOT_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",  # the only one: episodes, views and the contrastive targets are made on the CPU
    "threads": None,
    "data": {"dataset": "ct",  # ct: CT patches of the base structures; digits: scikit-learn's digits 0-4
             "patients": "data/pack/train", "patch_size": 32, "slices": 4},  # slices per structure and patient
    "fewshot": {
        "method": "learned",  # protonet; random: + InfoNCE on random views; learned: + InfoNCE on learned views
        "ways": 5, "shots": 5, "queries": 10,  # the training episodes
        "channels": 32, "depth": 4,  # the encoder
        "contrastive_weight": 0.5, "temperature": 0.2,
        "inner_lr": 0.01, "generator_lr": 1e-3,  # the learned views' meta-loop
        "view_strength": 1.0,  # scales every view bound: rotation 20 deg, scale 1.2, shift 15%, gain 0.2, ...
    },
    "optim": {**DEFAULTS["optim"], "steps": 1000, "batch_size": 1, "lr": 1e-3, "weight_decay": 0.0,
              "warmup_steps": 0, "min_lr_ratio": 1.0, "grad_clip": None, "skip_grad_norm": None},
    "validate_every": 50,  # a metrics row (mean losses and accuracy) and an export
    "checkpoint_every": 100,
}

#: Sections whose keys are the consumer's to check (a builder's or a strategy's arguments).
_FREE_FORM = ("search.options", "detector")
#: Keys that take null beside their default's type (null: no clipping, no skipping); a key whose default is null
#: takes null or the type given here.
_NULLABLE = ("optim.grad_clip", "optim.skip_grad_norm")
_NULL_DEFAULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "init": str, "threads": int, "data.beam_angles": list, "data.max_validation_patients": int,
    "optim.max_minutes": (int, float), "optim.grad_clip": (int, float), "optim.skip_grad_norm": (int, float),
    "distill.teacher_targets": str}
#: Values a key's type admits but its meaning does not (checked for every key whose value is not null).
_VALID: dict[str, tuple[Any, str]] = {
    **{key: (lambda v: 0 < v < math.inf, "a positive number") for key in (
        "optim.grad_clip", "optim.skip_grad_norm")},
    **{key: (lambda v: 0 <= v < math.inf, "a finite number from 0 up") for key in (
        "optim.lr", "search.lr", "distill.critic_lr", "optim.max_minutes")},  # lr 0: weights kept; 0 min: one step
    **{key: (lambda v: v >= 1, "at least 1") for key in (
        "threads", "data.max_validation_patients", "search.supernet_steps", "search.batch_size", "search.max_sweeps",
        "search.validation_patients", "search.teachers", "search.pool")},
    **{key: (lambda v: v >= 0, "at least 0") for key in (
        "optim.weight_decay", "optim.warmup_steps", "loss.dvh_weight", "data.workers", "search.diversity_weight")},
    "data.beam_rotation": (lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
    "optim.min_lr_ratio": (lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    "data.resolution": (lambda v: MIN_RESOLUTION <= v <= MAX_RESOLUTION,
                        f"a grid edge from {MIN_RESOLUTION} to {MAX_RESOLUTION} voxels (what a model may be loaded with)"),
    "data.beam_angles": (lambda v: len(v) > 0 and all(type(a) in (int, float) for a in v), "a list of angles (deg)"),
}


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                defaults: dict[str, Any] = DEFAULTS) -> dict[str, Any]:
    """``defaults``, updated by the file at ``path`` (YAML or JSON), then by ``key.sub=value`` overrides."""
    config = copy.deepcopy(defaults)
    if path is not None:
        try:
            loaded = safe_yaml.load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config ({error})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys to values")
        _merge(config, loaded, str(path))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        nested: dict[str, Any] = {}
        cursor = nested
        *parents, leaf = key.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        try:
            cursor[leaf] = safe_yaml.load(value)
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: its value is not valid YAML") from None
        _merge(config, nested, f"override {override!r}")
    return config


def _merge(base: dict[str, Any], update: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(known) for known in base], n=1)
            raise ConfigError(f"{where}: unknown key {name!r}" + (f"; did you mean {prefix + close[0]!r}?" if close else ""))
        if name == "network":  # free-form: the builder's arguments; another network name starts afresh
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: network must be a mapping")
            same_network = value.get("name", base[key]["name"]) == base[key]["name"]
            base[key] = {**base[key], **value} if same_network else dict(value)
        elif name in _FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {name} must be a mapping")
            base[key] = {**base[key], **value}
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {name} must be a mapping")
            _merge(base[key], value, where, f"{name}.")
        else:
            base[key] = _checked(name, base[key], value, where)


def _checked(name: str, default: Any, value: Any, where: str) -> Any:
    """``value`` for the key ``name`` if it has its default's type (an int may stand for a float; YAML's ``1e-3``,
    which it reads as text, stands for a number) and a meaning; null only where the key takes it."""
    if value is None:
        if default is None or name in _NULLABLE:
            return None
        raise ConfigError(f"{where}: {name} cannot be null")
    expected = _NULL_DEFAULT_TYPES.get(name, object) if default is None else (
        (int, float) if type(default) is float else type(default))
    if isinstance(value, str) and expected in (int, float, (int, float)):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number) and (expected != int or number.is_integer()):
            value = int(number) if expected == int else number
    if expected is not object and (isinstance(value, bool) != (expected is bool) or not isinstance(value, expected)):
        shown = type(default).__name__ if default is not None else getattr(expected, "__name__", "number")
        raise ConfigError(f"{where}: {name} must be of type {shown}, not {value!r}")
    check, meaning = _VALID.get(name, (None, ""))
    if check is not None and not check(value):
        raise ConfigError(f"{where}: {name} must be {meaning}, not {value!r}")
    return value


def save_config(config: dict[str, Any], path: Path) -> None:
    """Write the resolved config as YAML (JSON when ``path`` ends in .json)."""
    text = json.dumps(config, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
