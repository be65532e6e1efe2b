"""The shared vLLM engine: one session per model, its configuration, the platform it runs on, and
the processes it starts."""
