"""The OpenAI API without a web framework: request and response schemas, bounds, the service,
the chat and completion builders, logprobs, errors, prompts, event encoding, the OpenAPI document.

The ASGI app (`handler.asgi`) and the queue worker (`handler.serverless`) both answer through it.
"""
