"""The token side of an identity provider, served for real on loopback: a JWKS endpoint with the
test's own RSA keys (which it can rotate), and an RFC 7662 introspection endpoint that asks for the
relying party's client credentials. It counts what it is asked, so tests can see Scope's caches.

(oidc-provider-mock, which the sign-in tests use, issues opaque access tokens and has no
introspection endpoint.)
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "kahn-scope-api"
CLIENT_ID = "kahn-scope"
CLIENT_SECRET = "kahn-scope-secret"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenProvider:
    url: str = ""
    # kid → private key, of the keys the JWKS endpoint publishes.
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    # Opaque token → the introspection answer for it (anything unknown is inactive).
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwks_fetches: int = 0
    introspections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def rotate(self) -> str:
        """A new signing key, published in place of the others: the provider rotated."""
        kid = secrets.token_hex(8)
        self.keys = {kid: rsa_key()}
        return kid

    @property
    def kid(self) -> str:
        return next(iter(self.keys))

    def claims(self, sub: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def mint(
        self, sub: str, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None, **claims: Any
    ) -> str:
        """A JWT access token for `sub`, signed with the provider's key (or `key`, under `kid`)."""
        kid = kid or self.kid
        signer = key or self.keys[kid]
        return jwt.encode(self.claims(sub, **claims), signer, algorithm="RS256", headers={"kid": kid})

    def issue_opaque(self, sub: str, *, active: bool = True, **answer: Any) -> str:
        token = secrets.token_urlsafe(32)
        self.opaque[token] = {
            "active": active,
            "sub": sub,
            "aud": AUDIENCE,
            "iss": self.issuer,
            "exp": int(time.time()) + 300,
            **answer,
        }
        return token

    # ------------------------------------------------------------ the endpoints

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            self.jwks_fetches += 1
        keys = []
        for kid, private in self.keys.items():
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            keys.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def introspect(self, authorization: str, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.introspections += 1
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != expected:
            return 401, {"error": "invalid_client"}
        token = (form.get("token") or [""])[0]
        return 200, self.opaque.get(token, {"active": False})


@contextmanager
def token_provider() -> Iterator[TokenProvider]:
    provider = TokenProvider()
    provider.rotate()

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/jwks":
                self.answer(200, provider.jwks())
            else:
                self.answer(404, {"error": "not_found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if self.path == "/introspect":
                self.answer(*provider.introspect(self.headers.get("Authorization", ""), form))
            else:
                self.answer(404, {"error": "not_found"})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
