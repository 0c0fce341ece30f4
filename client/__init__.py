"""Clients of the Triton model: tensor helpers for tritonclient, and the OpenAI-style frontend."""
