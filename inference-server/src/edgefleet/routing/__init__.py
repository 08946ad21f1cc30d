"""Pure routing decisions: policy schema, privacy gate, complexity score, budget, breaker.

Nothing here does I/O, so the router, the egress service and the operator's
admission checks share it and it is tested without servers.
"""
