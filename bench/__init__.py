"""bench: measuring decoders (prompts, methods, runs, records, summaries, latency profiles)."""
