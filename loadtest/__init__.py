"""Locust load tests for any OpenAI-compatible server (ladle or another), and a headless runner.

`python -m loadtest --url http://127.0.0.1:8000 --users 1,4,16 --duration 30s` runs
loadtest/locustfile.py headless once per user count and writes Locust's CSV and a Markdown
summary. Importing this package does not import Locust (which patches the standard library
with gevent); only the locustfile does.
"""
