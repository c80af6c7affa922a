"""qwembed: self-hosted text embeddings built around Qwen3-Embedding."""

__version__ = "0.1.0"
