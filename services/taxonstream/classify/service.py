"""Classification behind the indexer's Classify RPC: text vectors from the embedder, banks from S3.

Zero-shot label embeddings (labels x templates through the embedder's EmbedTexts) are cached per label
set and template set, so a repeated `predict --labels …` costs one image embedding. Banks are read from
`banks/<name>/` in the object store once per process (a new bank gets a new name).

Probabilities use the model's own temperature, as pybioclip does (softmax(exp(logit_scale) * cos)): the
embedder answers EmbedTexts with the checkpoint's exp(logit_scale), recorded at `models install`; models
that record none (the stand-ins) use CLIP's 100.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from taxonstream.classify.templates import OPENAI_IMAGENET_TEMPLATES, prompts
from taxonstream.classify.zeroshot import (
    DEFAULT_LOGIT_SCALE,
    RANKS,
    LabelBank,
    Prediction,
    label_embeddings,
    zero_shot,
)
from taxonstream.core.keys import bank_keys
from taxonstream.core.store import ObjectStore

# texts -> (vectors, model, version, exp(logit_scale) or 0.0 when the model records none)
EmbedTexts = Callable[[list[str]], tuple[np.ndarray, str, str, float]]
DEFAULT_BANK = "tol"
MAX_LABELS = 1000
_PROMPTS_PER_CALL = 512  # texts per EmbedTexts call: keeps each gRPC message well under its size cap


def store_bank(store: ObjectStore, name: str, bank: LabelBank, model: str, model_version: str) -> None:
    npy_key, names_key, meta_key = bank_keys(name)
    npy, names = bank.to_bytes()
    store.put(npy_key, npy)
    store.put(names_key, names, "application/json")
    # meta.json last: its presence says the bank is complete, and which model's space its vectors are in.
    store.put_json(
        meta_key,
        {
            "model": model,
            "model_version": model_version,
            "species": len(bank.taxa),
            "dim": int(bank.embeddings.shape[1]),
        },
    )


class ClassifyError(ValueError):
    """A request that cannot be answered as asked (unknown rank, missing bank, model mismatch)."""


class Classifier:
    def __init__(
        self,
        embed_texts: EmbedTexts,
        store: ObjectStore | None,
        model: str,
        model_version: str,
        logit_scale: float | None = None,  # None: the embedder's answer says
        cache_size: int = 64,
    ) -> None:
        self.embed_texts = embed_texts
        self.store = store
        self.model = model
        self.model_version = model_version
        self._logit_scale = logit_scale
        self._labels: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._banks: dict[str, LabelBank] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def label_vectors(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        key = (tuple(labels), tuple(templates))
        with self._lock:
            if key in self._labels:
                self._labels.move_to_end(key)
                return self._labels[key]
        texts = prompts(labels, templates)
        parts = []
        for start in range(0, len(texts), _PROMPTS_PER_CALL):
            parts.append(self._embed(texts[start : start + _PROMPTS_PER_CALL]))
        vectors = label_embeddings(np.concatenate(parts), len(labels))
        with self._lock:
            self._labels[key] = vectors
            while len(self._labels) > self._cache_size:
                self._labels.popitem(last=False)
        return vectors

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors, model, version, scale = self.embed_texts(texts)
        if (model, version) != (self.model, self.model_version):
            raise ClassifyError(
                f"the embedder serves {model}/{version}, the index holds "
                f"{self.model}/{self.model_version}: text and image vectors would not compare"
            )
        if self._logit_scale is None:
            self._logit_scale = float(scale) if scale > 0 else DEFAULT_LOGIT_SCALE
        return vectors

    @property
    def logit_scale(self) -> float:
        """The model's exp(logit_scale); asked of the embedder once when no text has been embedded yet."""
        if self._logit_scale is None:
            self._embed(["a photo"])  # a bank-only classifier: one short text tells the model's temperature
        return self._logit_scale or DEFAULT_LOGIT_SCALE

    def zero_shot(
        self, image: np.ndarray, labels: Sequence[str], k: int, templates: Sequence[str] = ()
    ) -> list[Prediction]:
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise ClassifyError("no labels given")
        if len(labels) > MAX_LABELS:
            raise ClassifyError(f"at most {MAX_LABELS} labels per request")
        if len(set(labels)) != len(labels):
            raise ClassifyError("labels must be distinct")
        try:
            vectors = self.label_vectors(labels, list(templates) or list(OPENAI_IMAGENET_TEMPLATES))
        except ValueError as error:
            raise ClassifyError(str(error)) from error
        return zero_shot(image, labels, vectors, k, self.logit_scale)

    def bank(self, name: str) -> LabelBank:
        with self._lock:
            if name in self._banks:
                return self._banks[name]
        if self.store is None:
            raise ClassifyError("no object store to read banks from")
        try:
            npy_key, names_key, meta_key = bank_keys(name)
        except ValueError as error:
            raise ClassifyError(str(error)) from error
        meta = self.store.get_json(meta_key)
        if meta is None:
            raise ClassifyError(f"no label bank {name!r} (install one: taxonstream models bank --help)")
        if (meta.get("model"), meta.get("model_version")) != (self.model, self.model_version):
            raise ClassifyError(
                f"bank {name!r} holds {meta.get('model')}/{meta.get('model_version')} vectors, "
                f"the index {self.model}/{self.model_version}"
            )
        bank = LabelBank.from_bytes(self.store.get(npy_key), self.store.get(names_key))
        with self._lock:
            self._banks[name] = bank
        return bank

    def to_rank(self, image: np.ndarray, rank: str, k: int, bank: str = "") -> list[Prediction]:
        rank = rank or "species"
        if rank not in RANKS:
            raise ClassifyError(f"rank must be one of {', '.join(RANKS)}, not {rank!r}")
        return self.bank(bank or DEFAULT_BANK).predict(image, rank, k, self.logit_scale)


def classify_response(servicer, request, vector: np.ndarray, model: str, model_version: str):
    """The indexer's ClassifyResponse for `request` against index version `model`/`model_version`.

    The servicer lends its embedder, store and `classifiers` (one per version, with its label-embedding caches).
    """
    from taxonstream.v1 import embedder_pb2, indexer_pb2

    classifiers = servicer.classifiers  # the servicer owns them: {(model, version): Classifier}
    classifier = classifiers.get((model, model_version))
    if classifier is None:

        def embed_texts(texts: list[str]) -> tuple[np.ndarray, str, str, float]:
            answer = servicer.embedder.EmbedTexts(
                embedder_pb2.EmbedTextsRequest(texts=texts, model=model, model_version=model_version), timeout=300
            )
            return (
                np.asarray([v.values for v in answer.vectors], dtype=np.float32),
                answer.model,
                answer.model_version,
                answer.logit_scale,
            )

        classifier = Classifier(embed_texts, servicer.store, model, model_version)
        classifiers[(model, model_version)] = classifier
    k = request.k or 5
    if request.labels:
        predictions = classifier.zero_shot(vector, list(request.labels), k, list(request.templates))
        rank = ""
    else:
        rank = request.rank or "species"
        predictions = classifier.to_rank(vector, rank, k, request.bank)
    return indexer_pb2.ClassifyResponse(
        predictions=[
            indexer_pb2.Prediction(label=p.label, score=p.score, taxon=list(p.taxon), common_name=p.common_name)
            for p in predictions
        ],
        model=classifier.model,
        model_version=classifier.model_version,
        rank=rank,
    )
