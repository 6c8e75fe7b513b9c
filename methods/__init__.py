"""LLM methods, one module per method, plus the pieces they share (backbone, prompts, scoring,
adapter layers, training loop)."""
