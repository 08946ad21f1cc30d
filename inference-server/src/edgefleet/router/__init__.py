"""edgefleet-router: the hybrid router's servers (gRPC, OIP v2, OpenAI HTTP)."""
