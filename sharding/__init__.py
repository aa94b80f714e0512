"""llmlab: sharding."""
