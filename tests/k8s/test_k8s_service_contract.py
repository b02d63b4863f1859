"""The environment the chart gives each service is read by that service's own settings class."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from pathlib import Path

import pytest
from k8s_support import SERVICES, by_component, env_of, render

from taxonstream.core.settings import CoreSettings


def _settings_class(service: str) -> type[CoreSettings]:
    """The CoreSettings subclass `python -m taxonstream.<service>` runs with."""
    # Read, never imported: importing __main__ would start the service.
    main = Path(importlib.util.find_spec(f"taxonstream.{service}.__main__").origin).read_text()
    for module_name in (f"taxonstream.{service}.settings", f"taxonstream.{service}.worker"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, CoreSettings)
                and value is not CoreSettings
                and name in main
            ):
                return value
    raise AssertionError(f"no settings class for {service}")


@pytest.mark.parametrize("service", SERVICES)
def test_chart_environment_parses_into_the_service_settings(service, monkeypatch):
    deployment = by_component(render("default"), "Deployment")[service]
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    settings_type = _settings_class(service)
    prefix = settings_type.model_config["env_prefix"]
    # Settings ignore unknown variables, so a misspelt name in the chart would pass silently.
    unknown = {n for n in env if n.removeprefix(prefix).lower() not in settings_type.model_fields}
    assert not unknown, f"{service} has no setting for {sorted(unknown)}"
    for name in list(os.environ):
        if name.startswith(prefix):
            monkeypatch.delenv(name)
    for name, var in env.items():
        monkeypatch.setenv(name, var.get("value", f"from-secret-{name}"))
    settings = settings_type()
    assert (settings.bind_host, settings.grpc_port, settings.metrics_port) == ("0.0.0.0", 50051, 9090)
    assert settings.kafka_bootstrap == "taxonstream-kafka:9092"
    assert settings.topic_prefix == "taxonstream." and settings.topic_partitions == 4
    assert settings.s3_endpoint == "taxonstream-minio:9000" and settings.s3_secure is False
    assert settings.s3_access_key == "from-secret-TAXONSTREAM_S3_ACCESS_KEY"
    if service in {"detector", "embedder"}:
        assert settings.triton_url == "taxonstream-triton:8001"
    if service == "indexer":
        assert settings.embedder_addr == "taxonstream-embedder:50051"
        assert settings.detector_addr == "taxonstream-detector:50051"
