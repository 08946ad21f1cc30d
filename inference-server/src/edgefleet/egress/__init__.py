"""edgefleet-egress: the one component that talks to the cloud LLM."""

# Where the egress reads the cloud key when no --api-key-file is given; the operator
# sets it from the RoutingPolicy's apiKeySecretRef.
API_KEY_VARIABLE = "EDGEFLEET_CLOUD_API_KEY"
