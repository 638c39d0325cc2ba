"""The engine core, shared by every backend: admission, scheduling, prefill and the prefix cache,
sampling, detokenizing, stopping, and the contract (`contract.Backend`) a backend fulfils.

It never imports a backend or the Transformers runner; backends are handed to it.
"""
