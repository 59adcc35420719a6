"""OIDC sign-in (mozilla-django-oidc): a login is matched to a user by the provider's `sub`.

The email is a display field, not the key: it can change at the provider, and two providers'
accounts can share one. An email names a person only when the provider reports
`email_verified: true` (SPEC section 8): only then is it stored as the user's address, and only then
does a sign-in claim what waits for the address (an owner slot named by `manage.py create_tenant
--owner EMAIL`, or an invitation from the Members page, held by a user made for it): a first sign-in
takes that user over, a later one takes its memberships (`user_claim_waiting_memberships`). Since
every stored address of a signed-in user was verified, an owner slot or an invitation for an address
goes to its verified holder only (`tenants.services.user_for_email`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import jwt
import requests
from django.contrib.auth.models import User
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from tenants.models import Identity
from tenants.services import user_claim_waiting_memberships

logger = logging.getLogger(__name__)


class TenantOIDCBackend(OIDCAuthenticationBackend):
    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User:
        claims = self.get_userinfo(access_token, id_token, payload)
        sub = payload.get("sub")
        # OIDC Core 5.3.2: the userinfo `sub` must be the ID token's, or the claims are someone else's.
        if not sub or claims.get("sub") != sub:
            raise SuspiciousOperation("the userinfo sub does not match the ID token's sub")
        with transaction.atomic():
            identity = Identity.objects.select_related("user").filter(sub=sub).first()
            if identity is not None:
                user = identity.user
            else:
                user = self.invited_user(claims) or self.new_user(claims)
                Identity.objects.create(user=user, sub=sub)
            self.update_display_fields(user, claims)
            email = verified_email(claims)
            if email:
                user_claim_waiting_memberships(user=user, verified_email=email)
        return user

    def retrieve_matching_jwk(self, token: str) -> jwt.PyJWK:
        """The provider's key that signed `token`, chosen by `kid` when the token names one.

        `kid` is optional in a JWS header (RFC 7515 4.1.4), and mozilla-django-oidc fails on a
        token without one; then the provider's one signing key for the token's algorithm is used,
        and more than one is refused rather than guessed.
        """
        response = requests.get(
            self.OIDC_OP_JWKS_ENDPOINT,
            verify=self.get_settings("OIDC_VERIFY_SSL", True),
            timeout=self.get_settings("OIDC_TIMEOUT", None),
            proxies=self.get_settings("OIDC_PROXY", None),
        )
        response.raise_for_status()
        header = jwt.get_unverified_header(token)
        keys = [
            key
            for key in response.json().get("keys", [])
            if key.get("use", "sig") == "sig" and key.get("alg", header.get("alg")) == header.get("alg")
        ]
        if "kid" in header:
            keys = [key for key in keys if key.get("kid") == header["kid"]]
        if len(keys) != 1:
            raise SuspiciousOperation(f"{len(keys)} of the provider's keys match the ID token's header")
        return jwt.PyJWK(keys[0])

    def invited_user(self, claims: dict[str, Any]) -> User | None:
        """The one user made in advance for this verified email, still without an identity."""
        email = verified_email(claims)
        if not email:
            return None
        candidates = list(self.UserModel.objects.filter(email__iexact=email, identity__isnull=True)[:2])
        return candidates[0] if len(candidates) == 1 else None

    def new_user(self, claims: dict[str, Any]) -> User:
        # A stable username that reveals nothing: the sub may be an email at some providers.
        digest = hashlib.sha256(claims["sub"].encode()).hexdigest()[:24]
        return self.UserModel.objects.create_user(username=f"oidc_{digest}", email=verified_email(claims))

    def update_display_fields(self, user: User, claims: dict[str, Any]) -> None:
        """What the provider says now about the person's email and name; claims it omits change nothing.

        An email the provider does not verify clears the stored one: the provider no longer vouches
        for any address of this person, and a stored address would claim owner slots and invitations.
        """
        shown: dict[str, str] = {}
        if claims.get("email"):
            shown["email"] = verified_email(claims)
        if claims.get("given_name") or claims.get("family_name"):
            shown["first_name"] = str(claims.get("given_name") or "")[:150]
            shown["last_name"] = str(claims.get("family_name") or "")[:150]
        elif claims.get("name"):
            shown["first_name"], shown["last_name"] = str(claims["name"])[:150], ""
        changed = [name for name, value in shown.items() if getattr(user, name) != value]
        for name in changed:
            setattr(user, name, shown[name])
        if changed:
            user.save(update_fields=changed)


def verified_email(claims: dict[str, Any]) -> str:
    """The claims' email if the provider says it is verified (the JSON `true`, nothing looser), else ''."""
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        return ""
    email = email.strip()
    # Longer than the column holds: cut short it would name another address, so none is stored.
    return email if len(email) <= 254 else ""
