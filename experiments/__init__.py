"""llmlab: experiments."""
