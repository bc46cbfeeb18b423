"""The real clients people point at an OpenAI-compatible server, driven against pycompat.

A package so that its conftest.py imports as ``clients.conftest`` and does not
displace tests/conftest.py, which the other test files import as ``conftest``.
"""
