"""edgefleet-egress: the one component that talks to the cloud LLM."""
