"""The plain Transformers backend."""

from backends.hf_eager.backend import HFEagerBackend, load

__all__ = ["HFEagerBackend", "load"]
