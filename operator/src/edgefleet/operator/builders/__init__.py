"""Pure builders: a resource's spec in, the child manifests (plain dicts) out."""
