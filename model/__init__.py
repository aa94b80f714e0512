"""llmlab: model."""
