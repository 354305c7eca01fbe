"""Curation of Stack Overflow and Alpaca data into Llama-2 prompt/completion datasets."""
