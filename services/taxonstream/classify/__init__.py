"""Zero-shot, rank and linear-probe classification over CLIP embeddings (the recipes pybioclip uses)."""
