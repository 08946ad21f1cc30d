"""What the operator and the router agree on about the Kubernetes API, in one place.

Credentials (a pod's ServiceAccount, else $KUBECONFIG), which refusals are
worth retrying as they are, and what a ready endpoint is: the router sends
traffic to exactly the endpoints the operator counts as ready in status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes import client

# A watch's resourceVersion is too old: list again (no backoff needed).
HTTP_GONE = 410


def api_client(connections: int | None = None) -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere (tests on the host), $KUBECONFIG.

    `connections` sizes the connection pool: one per thread that calls the
    API at once, or busy threads open a fresh TLS connection per call and the
    pool discards it afterwards. None keeps the client's default.
    """
    # Imported here: a router run from files (and the vLLM image) has no
    # Kubernetes client, and needs only this module's pure functions.
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    if connections is not None:
        configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def transient(status: int) -> bool:
    """Whether a refused call may succeed if sent again unchanged.

    Conflicts, throttling, timeouts and server trouble pass; 0 is no answer at
    all (a dropped connection). Anything else (forbidden, invalid, not found)
    needs a person or a different request.
    """
    return status in (0, 408, 409, 429) or status >= 500


def endpoint_serving(endpoint: Mapping[str, Any]) -> bool:
    """Whether an EndpointSlice endpoint (one pod) takes traffic.

    The API's reading of absent conditions: ready unless it says false,
    terminating only when it says true. An endpoint without an address
    serves nothing.
    """
    conditions = endpoint.get("conditions") or {}
    return (
        bool(endpoint.get("addresses"))
        and conditions.get("ready") is not False
        and conditions.get("terminating") is not True
    )
