"""Generation with the base or fine-tuned model, and the base-vs-fine-tuned comparison."""
