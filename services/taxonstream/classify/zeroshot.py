"""Zero-shot and open-ended (to a rank) classification from CLIP embeddings: pure numpy.

The recipe is pybioclip's:
  - custom labels: every label through the prompt templates; the mean of its prompt embeddings,
    renormalised, is the label's embedding; probabilities = softmax(logit_scale * image . label);
  - to a rank: softmax(logit_scale * image . species) over a bank of species text embeddings; a higher
    rank's probability is the sum over the species sharing its taxon prefix (e.g. genus = kingdom ... genus).
logit_scale is CLIP's learned temperature, exp(logit_scale) = 100 for CLIP and BioCLIP.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
DEFAULT_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class Prediction:
    label: str  # the custom label, or the taxon's name at the rank (species: "Genus epithet")
    score: float  # probability
    taxon: tuple[str, ...] = ()  # rank predictions: kingdom .. the rank
    common_name: str = ""  # species predictions, when the bank has one


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def label_embeddings(prompt_vectors: np.ndarray, labels: int) -> np.ndarray:
    """[labels * templates, D] prompt embeddings (label-major) -> [labels, D]: mean per label, renormalised."""
    prompt_vectors = l2_normalise(prompt_vectors)
    if labels < 1 or prompt_vectors.shape[0] % labels:
        raise ValueError(f"{prompt_vectors.shape[0]} prompt vectors do not split into {labels} labels")
    per_label = prompt_vectors.reshape(labels, -1, prompt_vectors.shape[-1]).mean(axis=1)
    return l2_normalise(per_label)


def probabilities(image: np.ndarray, classes: np.ndarray, logit_scale: float = DEFAULT_LOGIT_SCALE) -> np.ndarray:
    """softmax(logit_scale * cos) of one image vector [D] against class vectors [C, D]."""
    logits = logit_scale * (l2_normalise(classes) @ l2_normalise(image))
    logits = logits - logits.max()
    exp = np.exp(logits.astype(np.float64))
    return (exp / exp.sum()).astype(np.float64)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest scores, best first; ties keep the earlier index first."""
    k = max(1, min(k, len(scores)))
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def zero_shot(
    image: np.ndarray,
    labels: Sequence[str],
    label_vectors: np.ndarray,
    k: int,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> list[Prediction]:
    probs = probabilities(image, label_vectors, logit_scale)
    return [Prediction(labels[i], float(probs[i])) for i in top_k(probs, k)]


@dataclass
class LabelBank:
    """Species text embeddings with their taxonomy: the form pybioclip ships for the TreeOfLife classifier.

    Files: `embeddings.npy`, float [D, N] as pybioclip stores it (or [N, D]), and `names.json`, a list of
    `[[kingdom, phylum, class, order, family, genus, species_epithet], common_name]` per species.
    """

    embeddings: np.ndarray  # [N, D], L2-normalised
    taxa: list[tuple[str, ...]]  # 7 names per species
    common_names: list[str]

    @classmethod
    def from_arrays(cls, embeddings: np.ndarray, names: list, dim: int | None = None) -> LabelBank:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"bank embeddings must be 2-D, got shape {embeddings.shape}")
        if embeddings.shape[0] != len(names) and embeddings.shape[1] == len(names):
            embeddings = embeddings.T  # pybioclip's [D, N]
        if embeddings.shape[0] != len(names):
            raise ValueError(f"{embeddings.shape} embeddings for {len(names)} names")
        if dim is not None and embeddings.shape[1] != dim:
            raise ValueError(f"bank vectors are {embeddings.shape[1]}-d, the model's are {dim}-d")
        taxa, common = [], []
        for entry in names:
            taxon, common_name = (entry[0], entry[1]) if len(entry) == 2 and isinstance(entry[0], list) else (entry, "")
            if len(taxon) != len(RANKS):
                raise ValueError(f"each name needs {len(RANKS)} ranks ({', '.join(RANKS)}), got {taxon!r}")
            taxa.append(tuple(str(t) for t in taxon))
            common.append(str(common_name or ""))
        return cls(l2_normalise(embeddings), taxa, common)

    @classmethod
    def from_bytes(cls, npy: bytes, names_json: bytes | str, dim: int | None = None) -> LabelBank:
        return cls.from_arrays(np.load(io.BytesIO(npy), allow_pickle=False), json.loads(names_json), dim)

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(embeddings.npy as pybioclip stores it, [D, N]; names.json)."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.embeddings.T), allow_pickle=False)
        names = [[list(t), c] for t, c in zip(self.taxa, self.common_names, strict=True)]
        return buffer.getvalue(), json.dumps(names).encode()

    def predict(
        self, image: np.ndarray, rank: str = "species", k: int = 5, logit_scale: float = DEFAULT_LOGIT_SCALE
    ) -> list[Prediction]:
        if rank not in RANKS:
            raise ValueError(f"rank must be one of {', '.join(RANKS)}, not {rank!r}")
        depth = RANKS.index(rank) + 1
        probs = probabilities(image, self.embeddings, logit_scale)
        if rank == "species":
            return [
                Prediction(_label(self.taxa[i], depth), float(probs[i]), self.taxa[i], self.common_names[i])
                for i in top_k(probs, k)
            ]
        summed: dict[tuple[str, ...], float] = defaultdict(float)
        for taxon, p in zip(self.taxa, probs, strict=True):
            summed[taxon[:depth]] += float(p)
        prefixes = list(summed)
        best = top_k(np.asarray([summed[p] for p in prefixes]), k)
        return [Prediction(_label(prefixes[i], depth), summed[prefixes[i]], prefixes[i]) for i in best]


def _label(taxon: tuple[str, ...], depth: int) -> str:
    """The taxon's name at its rank; a species is named binomially (genus + epithet), as pybioclip prints it."""
    if depth == len(RANKS):
        return f"{taxon[5]} {taxon[6]}".strip()
    return taxon[depth - 1]
