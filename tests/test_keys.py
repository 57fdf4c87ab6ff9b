"""Key families and key sources, without sockets (the JWKS cache over HTTP is in test_auth)."""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from wsgateway.errors import ConfigError
from wsgateway.keys import algorithms_for, jwks_url, read_public_key

PINNED = ("RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256")


def test_algorithm_families_never_cross():
    assert algorithms_for(rsa.generate_private_key(65537, 2048).public_key(), PINNED) == {"RS256", "PS256"}
    assert algorithms_for(ec.generate_private_key(ec.SECP256R1()).public_key(), PINNED) == {"ES256"}
    assert algorithms_for(ec.generate_private_key(ec.SECP384R1()).public_key(), PINNED) == {"ES384"}
    assert algorithms_for(ed25519.Ed25519PrivateKey.generate().public_key(), PINNED) == {"EdDSA"}
    assert algorithms_for(b"secret", PINNED) == set()  # an HMAC secret is never a public key
    assert algorithms_for(rsa.generate_private_key(65537, 1024).public_key(), PINNED) == set()  # too short


@pytest.mark.parametrize("url", ["https://issuer.example/jwks.json", "http://127.0.0.1:8000/jwks", "http://localhost/jwks"])
def test_jwks_urls_allowed(url):
    assert str(jwks_url(url, "auth.jwks_url")) == url


@pytest.mark.parametrize("url", ["http://issuer.example/jwks.json", "ftp://x/y", "https://", "file:///etc/passwd"])
def test_jwks_urls_refused(url):
    with pytest.raises(ConfigError) as info:
        jwks_url(url, "auth.jwks_url")
    assert info.value.key == "auth.jwks_url"


def test_read_public_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "k.pem"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert read_public_key(str(path)).public_numbers() == key.public_numbers()
    (tmp_path / "bad.pem").write_text("not a key")
    for bad in (tmp_path / "bad.pem", tmp_path / "missing.pem"):
        with pytest.raises(ConfigError) as info:
            read_public_key(str(bad))
        assert info.value.key == "auth.public_key_file"
