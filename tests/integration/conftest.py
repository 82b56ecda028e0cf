"""Clients for the real programs of the local stack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kube(stack: dict[str, Any]) -> Iterator[client.ApiClient]:
    """An admin ApiClient for the stack's kube-apiserver."""
    api = config.new_client_from_config(config_file=str(stack["KUBECONFIG"]))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube: client.ApiClient, unique_name: str) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=unique_name)))
    try:
        yield unique_name
    finally:
        core.delete_namespace(unique_name)
