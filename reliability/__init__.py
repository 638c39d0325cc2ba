"""Reliability tooling: the full fuzz run and the soak run, against a server on 127.0.0.1."""
