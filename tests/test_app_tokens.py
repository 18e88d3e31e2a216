"""JWT verification with real tokens signed by PyJWT (and, for the attacks, by hand).

Every refusal is a Rejection carrying 401 (and 4401/4408) and a reason that says
which check failed: what a client developer reads when a login does not work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from wschat.app import CLOSE_TOKEN_EXPIRED, CLOSE_UNAUTHORIZED, ConfigError, JwtVerifier, Rejection
from wschat.app.tokens import DEFAULT_LEEWAY

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"  # 34 bytes
OTHER_SECRET = "another-secret-another-secret-another"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 300, **extra}


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built without PyJWT's guard rails, as an attacker would."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def refused(verifier: JwtVerifier, token: str) -> Rejection:
    with pytest.raises(Rejection) as info:
        verifier.verify(token)
    return info.value


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture
def verifier() -> JwtVerifier:
    return JwtVerifier.from_secret(SECRET)


class TestHS256:
    def test_valid_token_gives_the_identity(self, verifier: JwtVerifier) -> None:
        payload = claims(name="Alice Liddell", role="admin")
        identity = verifier.verify(hs256(payload))
        assert identity.user_id == "alice"
        assert identity.name == "Alice Liddell"
        assert identity.claims["role"] == "admin"
        assert identity.expires_at == payload["exp"]
        assert identity.authenticated and identity.rooms is None

    def test_display_name_defaults_to_sub(self, verifier: JwtVerifier) -> None:
        assert verifier.verify(hs256(claims())).name == "alice"

    def test_claims_are_read_only(self, verifier: JwtVerifier) -> None:
        identity = verifier.verify(hs256(claims()))
        with pytest.raises(TypeError):
            identity.claims["sub"] = "mallory"  # type: ignore[index]

    def test_expired_token(self, verifier: JwtVerifier) -> None:
        now = int(time.time())
        rejection = refused(verifier, hs256(claims(iat=now - 600, exp=now - 120)))
        assert rejection.code == "token_expired"
        assert rejection.status == 401 and rejection.close_code == CLOSE_TOKEN_EXPIRED
        assert "expired" in rejection.reason

    def test_expiry_within_the_leeway_is_accepted(self, verifier: JwtVerifier) -> None:
        now = int(time.time())
        assert verifier.verify(hs256(claims(exp=now - 5))).user_id == "alice"
        assert DEFAULT_LEEWAY < 120  # so the expired case above is beyond it

    def test_zero_leeway_is_strict(self) -> None:
        strict = JwtVerifier.from_secret(SECRET, leeway=0)
        assert refused(strict, hs256(claims(exp=int(time.time()) - 2))).code == "token_expired"

    def test_not_yet_valid_token(self, verifier: JwtVerifier) -> None:
        rejection = refused(verifier, hs256(claims(nbf=int(time.time()) + 600)))
        assert rejection.code == "unauthorized" and rejection.close_code == CLOSE_UNAUTHORIZED
        assert "not valid yet" in rejection.reason

    def test_issued_in_the_future(self, verifier: JwtVerifier) -> None:
        assert (
            "not valid yet" in refused(verifier, hs256(claims(iat=int(time.time()) + 600))).reason
        )

    def test_wrong_key(self, verifier: JwtVerifier) -> None:
        rejection = refused(verifier, hs256(claims(), OTHER_SECRET))
        assert rejection.status == 401 and "signature" in rejection.reason

    def test_tampered_payload(self, verifier: JwtVerifier) -> None:
        head, _, signature = hs256(claims()).split(".")
        forged = f"{head}.{b64url(json.dumps(claims(sub='mallory')).encode())}.{signature}"
        assert "signature" in refused(verifier, forged).reason

    def test_exp_is_required(self, verifier: JwtVerifier) -> None:
        payload = claims()
        del payload["exp"]
        assert refused(verifier, hs256(payload)).reason == "token has no exp claim"

    def test_sub_is_required(self, verifier: JwtVerifier) -> None:
        payload = claims()
        del payload["sub"]
        assert refused(verifier, hs256(payload)).reason == "token has no sub claim"

    @pytest.mark.parametrize("sub", ["", " alice", "x" * 63, "a\nb"], ids=repr)
    def test_unusable_sub(self, verifier: JwtVerifier, sub: str) -> None:
        assert "sub" in refused(verifier, hs256(claims(sub=sub))).reason

    @pytest.mark.parametrize("name", ["", "   ", "x" * 65, 42, "tab\there"], ids=repr)
    def test_unusable_name(self, verifier: JwtVerifier, name: object) -> None:
        assert "name" in refused(verifier, hs256(claims(name=name))).reason

    def test_garbage_is_not_a_jwt(self, verifier: JwtVerifier) -> None:
        assert refused(verifier, "not-a-token").reason.startswith("not a JWT")

    def test_oversized_token(self, verifier: JwtVerifier) -> None:
        assert "over 8192" in refused(verifier, hs256(claims(pad="x" * 9000))).reason

    def test_short_secret_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="at least 32 bytes"):
            JwtVerifier.from_secret("short")


class TestAlgorithms:
    """RFC 8725 2.1 / 3.1: the server, not the token, decides the algorithm."""

    def test_alg_none_is_refused(self, verifier: JwtVerifier) -> None:
        token = hand_made({"alg": "none", "typ": "JWT"}, claims(), None)
        rejection = refused(verifier, token)
        assert rejection.status == 401 and "'none' is not allowed" in rejection.reason

    def test_alg_none_signed_by_pyjwt_is_refused(self, verifier: JwtVerifier) -> None:
        assert (
            "not allowed" in refused(verifier, jwt.encode(claims(), None, algorithm="none")).reason
        )

    def test_hs256_signed_with_the_public_key_is_refused(self, rsa_key: rsa.RSAPrivateKey) -> None:
        # Algorithm confusion: a verifier that let the token pick HS256 would use the
        # (public!) key bytes as the HMAC secret and accept this forgery.
        pem = public_pem(rsa_key)
        verifier = JwtVerifier.from_public_key(pem)
        forged = hand_made({"alg": "HS256", "typ": "JWT"}, claims(sub="mallory"), pem)
        rejection = refused(verifier, forged)
        assert rejection.status == 401 and "accepts RS256 only" in rejection.reason

    def test_rs256_token_to_an_hs256_verifier(self, rsa_key: rsa.RSAPrivateKey) -> None:
        token = jwt.encode(claims(), rsa_key, algorithm="RS256")
        assert "accepts HS256 only" in refused(JwtVerifier.from_secret(SECRET), token).reason

    def test_rs256(self, rsa_key: rsa.RSAPrivateKey) -> None:
        verifier = JwtVerifier.from_public_key(public_pem(rsa_key))
        assert verifier.algorithm == "RS256"
        assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "alice"

    def test_rs256_wrong_key(self, rsa_key: rsa.RSAPrivateKey) -> None:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        verifier = JwtVerifier.from_public_key(public_pem(rsa_key))
        token = jwt.encode(claims(), other, algorithm="RS256")
        assert "signature" in refused(verifier, token).reason

    def test_es256(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        verifier = JwtVerifier.from_public_key(public_pem(key))
        assert verifier.algorithm == "ES256"
        assert verifier.verify(jwt.encode(claims(), key, algorithm="ES256")).user_id == "alice"
        # The same curve's key cannot be used with another ES variant.
        es384 = jwt.encode(claims(), ec.generate_private_key(ec.SECP384R1()), algorithm="ES384")
        assert "accepts ES256 only" in refused(verifier, es384).reason

    def test_eddsa(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        verifier = JwtVerifier.from_public_key(public_pem(key))
        assert verifier.verify(jwt.encode(claims(), key, algorithm="EdDSA")).user_id == "alice"

    def test_key_from_a_file(self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
        path = tmp_path / "public.pem"
        path.write_bytes(public_pem(rsa_key))
        verifier = JwtVerifier.from_public_key_file(path)
        assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "alice"

    def test_private_key_file_is_refused(self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
        path = tmp_path / "private.pem"
        path.write_bytes(
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        with pytest.raises(ConfigError, match="give the public half"):
            JwtVerifier.from_public_key_file(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"--jwt-public-key .*missing\.pem"):
            JwtVerifier.from_public_key_file(tmp_path / "missing.pem")

    def test_small_rsa_key(self) -> None:
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        with pytest.raises(ConfigError, match="1024 bits"):
            JwtVerifier.from_public_key(public_pem(small))

    def test_unsupported_curve(self) -> None:
        with pytest.raises(ConfigError, match="secp256k1"):
            JwtVerifier.from_public_key(public_pem(ec.generate_private_key(ec.SECP256K1())))


class TestAudienceAndIssuer:
    def test_audience_matches(self) -> None:
        verifier = JwtVerifier.from_secret(SECRET, audience="chat")
        assert verifier.verify(hs256(claims(aud="chat"))).user_id == "alice"
        assert verifier.verify(hs256(claims(aud=["billing", "chat"]))).user_id == "alice"

    def test_wrong_audience(self) -> None:
        verifier = JwtVerifier.from_secret(SECRET, audience="chat")
        assert "must name 'chat'" in refused(verifier, hs256(claims(aud="billing"))).reason

    def test_missing_audience(self) -> None:
        verifier = JwtVerifier.from_secret(SECRET, audience="chat")
        assert refused(verifier, hs256(claims())).reason == "token has no aud claim"

    def test_audience_without_one_configured(self, verifier: JwtVerifier) -> None:
        # RFC 7519 4.1.3: a token for someone else is not for us.
        assert "set --jwt-audience" in refused(verifier, hs256(claims(aud="billing"))).reason

    def test_issuer(self) -> None:
        verifier = JwtVerifier.from_secret(SECRET, issuer="https://login.example")
        assert verifier.verify(hs256(claims(iss="https://login.example"))).user_id == "alice"
        wrong = refused(verifier, hs256(claims(iss="https://evil.example")))
        assert "issuer" in wrong.reason
        assert refused(verifier, hs256(claims())).reason == "token has no iss claim"


class TestRoomsClaim:
    def test_rooms_claim_is_kept(self, verifier: JwtVerifier) -> None:
        identity = verifier.verify(hs256(claims(rooms=["lobby", "team:*", "*"])))
        assert identity.rooms == ("lobby", "team:*", "*")

    @pytest.mark.parametrize(
        "rooms",
        ["lobby", ["bad room"], ["team*"], [":*"], ["a:*:b"], [1], ["x"] * 257, {"lobby": 1}],
        ids=lambda v: repr(v)[:20],
    )
    def test_bad_rooms_claim(self, verifier: JwtVerifier, rooms: object) -> None:
        assert "rooms claim" in refused(verifier, hs256(claims(rooms=rooms))).reason
