"""Model folders, written and read here only: ``config.json`` (with a ``kind``) beside safetensors weights;
and the shipped models, the folders beside this file.

Kinds: ``dose`` (a dose network, loaded by ``dosepred.inference.loader.load_predictor``), ``ensemble`` (its
``members``, dose model folders or names; no weights), ``detector`` (``dosepred.detection.training``) and
``fewshot`` (``dosepred.fewshot.train``). Weights are stored as float16 where every value survives the cast
(half the size; networks compute in float32 or bf16 anyway) and read back as float32. Pickles are never
read. A folder is written whole or not at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dosepred.io.files import atomic_folder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KINDS = ("dose", "ensemble", "detector", "fewshot")

#: The shipped models: the folders beside this file (only the default one travels in a wheel).
MODELS_DIR = Path(os.environ.get("DOSEPRED_MODELS") or Path(__file__).resolve().parent)
#: The best shipped model; predict, demo and the viewer use it unless told otherwise.
DEFAULT_MODEL = "unet-beams-128"


class ModelError(ValueError):
    """A model folder, config or weights file that cannot be used."""


@dataclass(frozen=True)
class ModelFolder:
    """A model folder as read: its ``kind`` and ``config`` (config.json without the kind)."""

    path: Path
    kind: str
    config: dict[str, Any]

    def weights(self, name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
        """The tensors of one weights file, floating ones as float32; refuses NaN or infinite values."""
        try:
            tensors = {key: value.float() if value.is_floating_point() else value
                       for key, value in load_file(self.path / name).items()}
        except (SafetensorError, OSError) as error:
            raise ModelError(f"{self.path / name}: cannot load weights ({error})") from None
        if not all(torch.isfinite(value).all() for value in tensors.values() if value.is_floating_point()):
            raise ModelError(f"{self.path / name}: the weights hold NaN or infinite values")
        return tensors

    def fitted(self, build: Callable[[], torch.nn.Module], name: str = WEIGHTS_FILE,
               weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """``build()``'s network holding this folder's weights (``weights``: the file's tensors, if already read).

        The network is built on the meta device first and its tensors' shapes compared with the weights file's
        header: a config that describes a far larger network than its weights is refused before it takes memory.
        """
        with torch.device("meta"):
            wanted = {key: tuple(value.shape) for key, value in build().state_dict().items()}
        try:
            with safe_open(self.path / name, "pt") as stored_file:
                stored = {key: tuple(stored_file.get_slice(key).get_shape()) for key in stored_file.keys()}
        except (SafetensorError, OSError) as error:
            raise ModelError(f"{self.path / name}: cannot load weights ({error})") from None
        differ = sorted(key for key in wanted.keys() | stored.keys() if wanted.get(key) != stored.get(key))
        if differ:
            raise ModelError(f"{self.path}: the weights do not fit the network its config describes ({len(differ)} "
                             f"tensors differ; {differ[0]!r}: {wanted.get(differ[0])} in the network, "
                             f"{stored.get(differ[0])} in the weights)")
        network = build()
        network.load_state_dict(self.weights(name) if weights is None else weights)
        return network


def write_model(folder: Path, kind: str, config: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]],
                files: dict[str, str] | None = None) -> None:
    """Write a model folder: ``config.json`` ({"kind": kind, **config}), each ``weights`` entry (file name ->
    state dict) as safetensors, and ``files`` (name -> text, e.g. a training log)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    with atomic_folder(folder) as staging:
        for name, state in weights.items():
            save_file({key: _half(value.detach().cpu().contiguous()) for key, value in state.items()}, staging / name)
        (staging / CONFIG_FILE).write_text(json.dumps({"kind": kind, **config}, indent=2) + "\n")
        for name, text in (files or {}).items():
            (staging / name).write_text(text)


def read_model(folder: str | Path, kind: str | None = None) -> ModelFolder:
    """Read a model folder's config; with ``kind``, refuse a folder of another kind.

    Raises:
        ModelError: a file instead of a folder (pickled checkpoints are refused), no or unreadable
            config.json, an unknown or unexpected kind, or a missing weights file.
    """
    folder = Path(folder)
    if folder.is_file():
        raise ModelError(f"{folder}: give a model folder holding {CONFIG_FILE} and its weights; "
                         "pickled checkpoints (.pt, .pth, .ckpt) are refused")
    if not (folder / CONFIG_FILE).is_file():
        raise ModelError(f"{folder}: not a model folder (no {CONFIG_FILE})")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, or an integer of 4300+ digits
        raise ModelError(f"{folder / CONFIG_FILE}: cannot read model config ({type(error).__name__}: "
                         f"{str(error)[:200]})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{folder / CONFIG_FILE}: a model config is a JSON object")
    found = config.pop("kind", None)
    if found not in KINDS:
        raise ModelError(f"{folder / CONFIG_FILE}: 'kind' is {found!r}; a model folder's kind is one of "
                         f"{', '.join(KINDS)}")
    if kind is not None and found != kind:
        raise ModelError(f"{folder}: a {found} model, where a {kind} model is needed")
    if found != "ensemble" and not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(f"{folder}: not a model folder (missing {WEIGHTS_FILE})")
    return ModelFolder(folder, found, config)


def shipped_models() -> list[str]:
    """Names of the shipped model folders."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(path.name for path in MODELS_DIR.iterdir() if (path / CONFIG_FILE).is_file())


def resolve_model(name_or_path: str | Path | None = None) -> Path:
    """A model folder from a path or a shipped model's name; None means the default model."""
    name_or_path = name_or_path or DEFAULT_MODEL
    path = Path(name_or_path)
    if path.exists():
        return path
    if (MODELS_DIR / path).is_dir():
        return MODELS_DIR / path
    raise ModelError(f"no model {str(name_or_path)!r}: not a path, and not among the shipped models in "
                     f"{MODELS_DIR} ({', '.join(shipped_models()) or 'none'})")


def _half(tensor: torch.Tensor) -> torch.Tensor:
    """float16 unless a value would not survive the cast (kept as it is then)."""
    if not tensor.is_floating_point():
        return tensor
    half = tensor.half()
    return half if torch.isfinite(half).all() or not torch.isfinite(tensor).all() else tensor
