"""The tensor contract between the services and the models Triton serves. Pure Python, no torch.

Services code against these names; the repository writer renders Triton configs from them, so the two
cannot drift apart. Dims exclude the batch axis (Triton's convention with max_batch_size > 0); every
model takes a dynamic batch axis in front, i.e. [-1, *dims].
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_IMAGE_SIZE = 224
EMBEDDING_DIM = 512
CLIP_CONTEXT_LENGTH = 77  # CLIP's text context: BPE tokens per text, padded
CLIP_VOCAB_SIZE = 49408  # CLIP's BPE vocabulary (48894 merges + 512 byte tokens + 2 specials)
DETECTOR_IMAGE_SIZE = 256
DETECTOR_QUERIES = 8
MAX_BATCH_SIZE = 32


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch axis
    data_type: str = "TYPE_FP32"


@dataclass(frozen=True)
class ModelContract:
    name: str
    version: str
    family: str
    task: str
    standin: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = MAX_BATCH_SIZE

    @property
    def model_id(self) -> str:
        """What services log and store beside their outputs, e.g. "clip_standin_image/1"."""
        return f"{self.name}/{self.version}"


# Input: CLIP-normalised pixels (taxonstream.models.preprocess.clip_pixel_values).
# Output: raw embeddings, NOT L2-normalised; the embedder normalises.
CLIP_IMAGE = ModelContract(
    name="clip_standin_image",
    version="1",
    family="clip-vit",
    task="image-embedding",
    standin=True,
    inputs=(TensorSpec("pixel_values", (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)),),
    outputs=(TensorSpec("embeddings", (EMBEDDING_DIM,)),),
)

# Input: pixels in [0, 1] squashed to S x S (taxonstream.models.preprocess.detector_pixels).
# Outputs: boxes (cx, cy, w, h) normalised to the image, one specimen score per query, both in [0, 1].
DETECTOR = ModelContract(
    name="detector_standin",
    version="1",
    family="detr",
    task="specimen-detection",
    standin=True,
    inputs=(TensorSpec("images", (3, DETECTOR_IMAGE_SIZE, DETECTOR_IMAGE_SIZE)),),
    outputs=(TensorSpec("boxes", (DETECTOR_QUERIES, 4)), TensorSpec("scores", (DETECTOR_QUERIES,))),
)

# Input: open_clip token ids (taxonstream.models.tokenizer.tokenize): zero-padded to 77, EOT the largest id.
# Output: raw text embeddings in the image tower's space, NOT L2-normalised.
CLIP_TEXT = ModelContract(
    name="clip_standin_text",
    version="1",
    family="clip-text",
    task="text-embedding",
    standin=True,
    inputs=(TensorSpec("input_ids", (CLIP_CONTEXT_LENGTH,), "TYPE_INT64"),),
    outputs=(TensorSpec("embeddings", (EMBEDDING_DIM,)),),
    max_batch_size=MAX_BATCH_SIZE * 4,  # zero-shot sends 80 prompts per label
)

ALL_MODELS: tuple[ModelContract, ...] = (CLIP_IMAGE, DETECTOR, CLIP_TEXT)
