"""Demo assets: tiny local models and tokenizers, the synthetic multi-strategy question family."""
