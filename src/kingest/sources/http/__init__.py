"""Application events over HTTP."""
