"""Microsoft Entra ID's token endpoints as the Azure SDK calls them, served over HTTPS on 127.0.0.1 (the real
service cannot be reached from tests): OpenID discovery and the v2.0 token endpoint for a service principal's
secret and a workload identity's federated token, and App Service's managed-identity endpoint. Each grant is checked
against the one identity it knows, recorded, and answered with a JWT that Azurite's OAuth check (`--oauth basic`:
lifetime, issuer, audience; no signature) accepts; a wrong secret is refused as Entra refuses it."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STORAGE_RESOURCE = "https://storage.azure.com"
STORAGE_SCOPE = f"{STORAGE_RESOURCE}/.default"


@dataclass
class Identity:
    """The one identity the service knows: a tenant and app (client) id, its secret, the token a workload's
    service account presents for it, and App Service's identity header."""

    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: f"secret-{uuid.uuid4().hex}")
    federated_token: str = field(default_factory=lambda: f"federated-{uuid.uuid4().hex}")
    identity_header: str = field(default_factory=lambda: f"header-{uuid.uuid4().hex}")


def _segment(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def access_token(tenant_id: str, subject: str) -> str:
    """A JWT for Azure Storage, as Entra issues one (unsigned: Azurite's basic check reads the claims only)."""
    now = int(time.time())
    claims = {
        "aud": STORAGE_RESOURCE, "iss": f"https://sts.windows.net/{tenant_id}/", "iat": now, "nbf": now - 60,
        "exp": now + 3600, "tid": tenant_id, "oid": subject, "sub": subject, "ver": "1.0",
    }  # fmt: skip
    return f"{_segment({'alg': 'RS256', 'typ': 'JWT'})}.{_segment(claims)}.{_segment({'unsigned': True})}"


class EntraService:
    """The endpoints on a free port; `grants` lists how each token was asked for ("client_secret",
    "client_assertion", "managed_identity")."""

    def __init__(self, identity: Identity, cert: Path, key: Path) -> None:
        self.identity = identity
        self.grants: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.authority = f"https://127.0.0.1:{self._server.server_address[1]}"
        self.identity_endpoint = f"{self.authority}/msi/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="entra", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/msi/token":
                    self._answer(*service.managed_identity(parse_qs(url.query), self.headers.get("X-IDENTITY-HEADER")))
                elif url.path.endswith("/v2.0/.well-known/openid-configuration"):
                    self._answer(200, service.openid_configuration(url.path.split("/")[1]))
                else:
                    self._answer(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                self._answer(*service.token(urlsplit(self.path).path, {k: v[0] for k, v in form.items()}))

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.authority}/{tenant}"
        return {
            "issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize", "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "token"], "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }  # fmt: skip

    def token(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        identity = self.identity
        if path != f"/{identity.tenant_id}/oauth2/v2.0/token":
            return 400, {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."}
        if form.get("client_id") != identity.client_id or STORAGE_SCOPE not in form.get("scope", "").split():
            return 400, {"error": "unauthorized_client", "error_description": "AADSTS700016: Application not found."}
        if "client_secret" in form:
            grant, valid = "client_secret", form["client_secret"] == identity.client_secret
        else:
            grant, valid = "client_assertion", form.get("client_assertion") == identity.federated_token
        if not valid:
            return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}
        self.grants.append(grant)
        token = access_token(identity.tenant_id, grant)
        return 200, {"token_type": "Bearer", "expires_in": 3600, "access_token": token}

    def managed_identity(self, query: dict[str, list[str]], header: str | None) -> tuple[int, dict[str, Any]]:
        if header != self.identity.identity_header or query.get("resource") != [STORAGE_RESOURCE]:
            return 400, {"error": "invalid_request", "error_description": "Missing or wrong X-IDENTITY-HEADER"}
        if query.get("client_id", [self.identity.client_id]) != [self.identity.client_id]:
            return 400, {"error": "invalid_request", "error_description": "No such user-assigned identity"}
        self.grants.append("managed_identity")
        token = access_token(self.identity.tenant_id, "managed_identity")
        expires = str(int(time.time()) + 3600)
        return 200, {"access_token": token, "expires_on": expires, "resource": STORAGE_RESOURCE, "token_type": "Bearer"}
