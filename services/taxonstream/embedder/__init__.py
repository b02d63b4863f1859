"""Embedder: CLIP-family image embeddings through Triton, batched, L2-normalised, versioned."""
