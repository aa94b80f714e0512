"""llmlab: train."""
