"""Workers: the worker that pulls trials, the local run of several, and the Python API (docs/architecture.md)."""
