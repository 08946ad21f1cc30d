"""A real Kubernetes test bed without Docker: see docs/testbed.md."""
