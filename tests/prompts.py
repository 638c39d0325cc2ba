"""Chat prompts shared by the tests that run the default model."""

from __future__ import annotations

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in simple terms.",
    "List three benefits of regular exercise.",
    "Translate 'good morning' into Spanish.",
    "What is 17 multiplied by 23?",
    "Write a Python function that reverses a string.",
    "Give me a recipe for a simple tomato pasta.",
    "Why is the sky blue?",
    "Summarize Romeo and Juliet in one sentence.",
    "What are the differences between TCP and UDP?",
    "Suggest a name for a coffee shop.",
    "Describe the water cycle for a child.",
    "Write a haiku about autumn leaves.",
    "How do I make green tea?",
    "Tell me a fun fact about octopuses.",
]
