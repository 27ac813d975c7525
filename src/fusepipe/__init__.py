"""fusepipe: knowledge fusion of heterogeneous chat LLMs as a staged, cached pipeline."""

__version__ = "0.1.0"
