"""The edgefleet Kubernetes operator (Kopf handlers and manifest builders)."""
