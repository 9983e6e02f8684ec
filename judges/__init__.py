"""LLM judges: a language model reads a response and answers questions about it.

`backends` is the one client every judge talks through (text-generation-inference or any
OpenAI-compatible server); `local` runs llama.cpp's server in-process on the packaged
SmolLM2, so a judge works offline out of the box through that same client.
"""
