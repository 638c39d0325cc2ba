"""The HTTP server: the Starlette app, its routes and middleware, the streaming response, and the
uvicorn lifecycle (drain on SIGTERM)."""
