"""Evaluation of embeddings and the index: retrieval recall@k and classification, with CSV and PNG reports."""
