"""The HTTP API: OpenAI-compatible chat completions, models and search, per-user API keys."""
