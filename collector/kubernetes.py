"""Kubernetes metadata for the processes of this node: pod, namespace, container, labels.

The daemon lists the pods of its own node through the API server with its service account
(read-only: get/list pods) and maps each container id (from a process's cgroup) to its pod.
Off Kubernetes this does nothing. An unreachable API is a problem reported in /readyz and
the logs, not an outage: the last known pods are kept and the daemon goes on attaching.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["KubeApi", "PodDirectory", "PodInfo", "parse_pods"]

_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class PodInfo:
    """The pod and container a process runs in."""

    name: str
    namespace: str
    uid: str
    container: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def resource(self, node: str | None) -> dict[str, str]:
        """OpenTelemetry resource attributes (k8s.* semantic conventions)."""
        attributes = {
            "k8s.pod.name": self.name,
            "k8s.namespace.name": self.namespace,
            "k8s.pod.uid": self.uid,
            "k8s.container.name": self.container,
        }
        if node:
            attributes["k8s.node.name"] = node
        return attributes


def parse_pods(body: dict[str, Any]) -> dict[str, PodInfo]:
    """Container id -> PodInfo, from a `GET /api/v1/pods` answer (a PodList)."""
    found: dict[str, PodInfo] = {}
    for item in body.get("items") or []:
        metadata = item.get("metadata") or {}
        status = item.get("status") or {}
        containers = [
            *(status.get("containerStatuses") or []),
            *(status.get("initContainerStatuses") or []),
            *(status.get("ephemeralContainerStatuses") or []),
        ]
        for container in containers:
            container_id = str(container.get("containerID") or "")
            if "://" not in container_id:
                continue
            found[container_id.split("://", 1)[1]] = PodInfo(
                name=str(metadata.get("name", "")),
                namespace=str(metadata.get("namespace", "")),
                uid=str(metadata.get("uid", "")),
                container=str(container.get("name", "")),
                labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
                annotations={
                    str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()
                },
            )
    return found


class KubeApi:
    """The API server: in-cluster (service account) or an explicit URL (tests, kubectl proxy)."""

    def __init__(self, base_url: str, token_file: str | None, ca_file: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file

    @classmethod
    def discover(cls) -> KubeApi | None:
        """$ASYNC_INSPECT_KUBE_API, else the in-cluster API server, else None (no Kubernetes)."""
        explicit = os.environ.get("ASYNC_INSPECT_KUBE_API")
        if explicit:
            return cls(explicit, os.environ.get("ASYNC_INSPECT_KUBE_TOKEN_FILE"), None)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            return None
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", f"{_ACCOUNT}/token", f"{_ACCOUNT}/ca.crt")

    async def pods_on(self, node: str) -> dict[str, Any]:
        """The PodList of `node` (raises aiohttp.ClientError / OSError / ValueError)."""
        headers = {"Accept": "application/json"}
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as token:  # re-read: tokens rotate
                headers["Authorization"] = f"Bearer {token.read().strip()}"
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        timeout = aiohttp.ClientTimeout(total=10)
        url = f"{self.base_url}/api/v1/pods"
        async with (
            aiohttp.ClientSession(timeout=timeout) as client,
            client.get(
                url, params={"fieldSelector": f"spec.nodeName={node}"}, headers=headers,
                ssl=context if context is not None else True,
            ) as response,
        ):  # fmt: skip
            if response.status != 200:
                text = (await response.text())[:200]
                raise ValueError(f"HTTP {response.status} from {url}: {text}")
            body: dict[str, Any] = await response.json()
            return body


class PodDirectory:
    """The pods of this node by container id, refreshed by the daemon's scan loop."""

    def __init__(self, api: KubeApi | None, node: str | None) -> None:
        self.api = api
        self.node = node
        self.pods: dict[str, PodInfo] = {}
        self.problem: str | None = None
        if api is not None and not node:
            self.problem = "on Kubernetes but no node name: set NODE_NAME from spec.nodeName"

    @property
    def enabled(self) -> bool:
        """True when pod metadata can be looked up."""
        return self.api is not None and bool(self.node)

    async def refresh(self) -> None:
        """Reload the node's pods; on failure keep the old ones and set `problem`."""
        if self.api is None or not self.node:
            return
        try:
            self.pods = parse_pods(await self.api.pods_on(self.node))
            self.problem = None
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
            self.problem = f"Kubernetes API unreachable ({self.api.base_url}): {exc}"

    def pod_for(self, container_id: str | None) -> PodInfo | None:
        """The pod of a container id, if known."""
        return self.pods.get(container_id) if container_id else None
