"""edgefleet-egress: the only component allowed to talk to the outside.

It serves the same gRPC contract as a model server (the router cannot tell
the difference) and answers from an OpenAI-compatible chat-completions API
through the `openai` SDK. The API key comes from a file or the
EDGEFLEET_CLOUD_API_KEY variable (the operator sets it from the policy's
Secret), never from a flag, so it stays out of process listings and logs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.egress import API_KEY_VARIABLE
from edgefleet.egress.audit import AuditLog
from edgefleet.egress.engine import CloudEngine, CloudSettings
from edgefleet.routing.policy import RoutingPolicy, load_policy
from edgefleet.serving.config import FrontSettings, ServerConfig
from edgefleet.serving.server import InferenceServer, expose, run_service, service_parser

log = logging.getLogger("edgefleet.egress")


@dataclass
class EgressConfig(FrontSettings):
    # The OpenAI-compatible API, e.g. https://api.openai.com/v1.
    base_url: str = ""
    # The cloud model to ask for.
    cloud_model: str = ""
    # File holding the API key (a mounted Secret); else $EDGEFLEET_CLOUD_API_KEY.
    api_key_file: str = ""
    # Name the egress serves under (the router asks for its default); empty:
    # the cloud model's name, so served_by says which model answered.
    model_name: str = ""
    # The RoutingPolicy file: its privacy detectors are enforced again here and
    # its prices used for the audit; empty: every built-in detector, no prices.
    policy_file: str = ""
    # Seconds one cloud call may take, and retries of retryable failures.
    timeout_s: float = 60.0
    max_retries: int = 2
    retry_backoff_s: float = 0.5
    # Cloud models take longer answers, and longer to finish them on SIGTERM.
    max_tokens_cap: int = 4096
    drain_grace_s: float = 30.0
    # Audit log (JSON lines); empty: standard output.
    audit_log: str = ""

    def api_key(self) -> str:
        if self.api_key_file:
            try:
                return Path(self.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read the API key file {self.api_key_file}: {exc.strerror}"
                ) from exc
        key = os.environ.get(API_KEY_VARIABLE, "")
        if not key:
            raise ValueError(f"no API key: set --api-key-file or ${API_KEY_VARIABLE}")
        return key

    def server_config(self) -> ServerConfig:  # type: ignore[override]
        return super().server_config(
            "openai",
            default_max_tokens=min(256, self.max_tokens_cap),
            # The router has already added its system prompt; the egress adds none.
            system_prompt="",
        )

    def engine(self) -> CloudEngine:
        problems = [
            f"--{name.replace('_', '-')} is required"
            for name in ("base_url", "cloud_model")
            if not getattr(self, name)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        policy = load_policy(Path(self.policy_file)) if self.policy_file else RoutingPolicy()
        settings = CloudSettings(
            base_url=self.base_url,
            model=self.cloud_model,
            api_key=self.api_key(),
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            retry_backoff_s=self.retry_backoff_s,
            price_per_1k_input_tokens=policy.budget.price_per_1k_input_tokens,
            price_per_1k_output_tokens=policy.budget.price_per_1k_output_tokens,
            capacity=self.max_concurrency,
        )
        name = self.model_name or self.cloud_model
        return CloudEngine(settings, policy.scanner(), AuditLog(self.audit_log), name)


async def serve(config: EgressConfig) -> None:
    engine = config.engine()
    server = InferenceServer(engine, config.server_config())
    expose(server, config.metrics_listen, server.service.metrics.registry)
    await server.start()
    log.info("egress to %s (model %s) on %s", config.base_url, config.cloud_model, config.listen)
    await server.wait_stopped()


def main(argv: list[str] | None = None) -> None:
    parser = service_parser(
        "edgefleet-egress",
        "Forward router requests to an OpenAI-compatible cloud LLM, audited.",
        EgressConfig,
    )
    run_service(parser.parse_args(argv), EgressConfig, serve)


if __name__ == "__main__":
    main()
