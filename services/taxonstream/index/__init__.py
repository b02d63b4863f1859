"""Vector index engines (FAISS, Milvus), metadata filters and index versions; the indexer service serves them."""
