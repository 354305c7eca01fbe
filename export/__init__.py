"""GGUF export for llama.cpp and Ollama, checked against the merged model."""
