"""What every stage shares: the run's Config, the Llama-2 prompt format, run paths and errors."""
