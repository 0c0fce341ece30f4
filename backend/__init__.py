"""Serving logic for the prompt-embeddings Triton model: everything model.py needs, testable without Triton."""
