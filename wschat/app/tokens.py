"""JWT verification on PyJWT: one key, one algorithm, every registered claim that matters.

A :class:`JwtVerifier` accepts exactly one algorithm, fixed by the key it was
configured with: HS256 for ``--jwt-secret``; RS256, ES256/384/512 or EdDSA for
``--jwt-public-key`` (by the key's type). A token naming any other algorithm is
refused before its signature is looked at, which is what defeats both
``alg: none`` and algorithm confusion (an HS256 token "signed" with the bytes
of the server's public key, RFC 8725 2.1 and 3.1).

Checked on every token: the signature, ``exp`` (required: a leaked token must
not work forever), ``nbf`` and ``iat`` (not in the future), ``aud`` against
``--jwt-audience`` (RFC 7519 4.1.3: a token carrying an ``aud`` that does not
name this server is refused, also when no audience is configured), ``iss``
against ``--jwt-issuer``, and ``sub`` (the user id).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..chat import MAX_TOKEN_LENGTH
from .errors import ConfigError
from .identity import Identity, Rejection, identity_from_claims

# Clocks of hosts kept by NTP agree within milliseconds; the leeway is for those that
# drift. Spring Security allows 60 s, .NET 5 min; 30 s keeps an expired token useful
# for at most half a minute.
DEFAULT_LEEWAY = 30.0
# RFC 7518 3.2: an HS256 key "of the same size as the hash output (... 256 bits ...)
# or larger MUST be used".
MIN_SECRET_BYTES = 32
# RFC 7518 3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
MIN_RSA_BITS = 2048
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class JwtVerifier:
    """Verifies tokens and turns their claims into an :class:`Identity`.

    Build one with :meth:`from_secret` or :meth:`from_public_key`.

    Args:
        key: The HMAC secret, or a public key object.
        algorithm: The one algorithm tokens must name.
        audience: The ``aud`` tokens must name (None: tokens must carry none).
        issuer: The ``iss`` tokens must carry (None: not checked).
        leeway: Seconds of clock difference allowed on ``exp``, ``nbf`` and ``iat``.
    """

    def __init__(
        self,
        key: bytes | PublicKey,
        algorithm: str,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> None:
        self._key = key
        self.algorithm = algorithm
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        required = ["exp", "sub"]
        if audience is not None:
            required.append("aud")
        if issuer is not None:
            required.append("iss")
        self._required: Sequence[str] = tuple(required)

    @classmethod
    def from_secret(
        cls,
        secret: str | bytes,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> JwtVerifier:
        """A verifier of HS256 tokens signed with ``secret``.

        Raises:
            ConfigError: The secret is shorter than 32 bytes (RFC 7518 3.2).
        """
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"--jwt-secret must be at least {MIN_SECRET_BYTES} bytes for HS256 "
                f"(RFC 7518 3.2); got {len(key)}"
            )
        return cls(key, "HS256", audience=audience, issuer=issuer, leeway=leeway)

    @classmethod
    def from_public_key(
        cls,
        pem: bytes,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
        source: str = "the public key",
    ) -> JwtVerifier:
        """A verifier of tokens signed by the private half of ``pem``.

        ``pem`` is a PEM public key or X.509 certificate. The algorithm follows
        from the key: RSA (2048 bits or more) RS256; EC P-256/P-384/P-521
        ES256/ES384/ES512; Ed25519 EdDSA.

        Raises:
            ConfigError: ``pem`` is not such a key (``source`` names it in the message).
        """
        key = _load_public_key(pem, source)
        algorithm = _algorithm_for(key, source)
        return cls(key, algorithm, audience=audience, issuer=issuer, leeway=leeway)

    @classmethod
    def from_public_key_file(
        cls,
        path: str | Path,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> JwtVerifier:
        """:meth:`from_public_key` with the PEM read from ``path``.

        Raises:
            ConfigError: The file cannot be read or holds no usable public key.
        """
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--jwt-public-key {path}: {exc.strerror or exc}") from None
        return cls.from_public_key(
            pem, audience=audience, issuer=issuer, leeway=leeway, source=f"--jwt-public-key {path}"
        )

    def verify(self, token: str) -> Identity:
        """Check ``token`` and return the identity it proves.

        Raises:
            Rejection: ``token_expired`` for an expired token, else ``unauthorized``
                with a reason saying which check failed.
        """
        claims = self.claims(token)
        return identity_from_claims(claims)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token`` (see :meth:`verify`).

        Raises:
            Rejection: The token is not valid.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise Rejection.unauthorized(f"token is over {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Rejection.unauthorized(f"not a JWT: {exc}") from None
        algorithm = header.get("alg")
        if algorithm != self.algorithm:
            raise Rejection.unauthorized(
                f"token algorithm {algorithm!r} is not allowed: this server accepts "
                f"{self.algorithm} only"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(self._required)},
            )
        except jwt.ExpiredSignatureError:
            raise Rejection.token_expired("token expired (its exp is past)") from None
        except jwt.ImmatureSignatureError:
            raise Rejection.unauthorized("token not valid yet (its nbf or iat is ahead)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Rejection.unauthorized(f"token has no {exc.claim} claim") from None
        except jwt.InvalidAudienceError:
            expected = (
                f"it must name {self.audience!r}"
                if self.audience is not None
                else "this server expects none (set --jwt-audience)"
            )
            raise Rejection.unauthorized(f"token audience (aud) refused: {expected}") from None
        except jwt.InvalidIssuerError:
            raise Rejection.unauthorized(f"token issuer (iss) is not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Rejection.unauthorized("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Rejection.unauthorized(f"invalid token: {exc}") from None
        return claims


def _load_public_key(pem: bytes, source: str) -> PublicKey:
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        hint = " (a private key? give the public half)" if b"PRIVATE KEY" in pem else ""
        raise ConfigError(f"{source} is not a PEM public key or certificate{hint}: {exc}") from None
    if isinstance(key, PublicKey):
        return key
    raise ConfigError(f"{source}: unsupported key type {type(key).__name__}")


def _algorithm_for(key: PublicKey, source: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"{source}: RSA key of {key.key_size} bits; RS256 needs {MIN_RSA_BITS} or more "
                "(RFC 7518 3.3)"
            )
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is None:
            raise ConfigError(f"{source}: curve {key.curve.name} is not one of P-256, P-384, P-521")
        return algorithm
    return "EdDSA"
