"""``reasonexit serve``: an OpenAI-compatible HTTP server whose every method exits early."""
