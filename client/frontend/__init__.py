"""OpenAI-compatible HTTP frontend (Completions, Chat Completions with prompt_embeds) over Triton gRPC."""
