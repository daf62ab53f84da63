"""Development certificates and node keys: valid chain, right names, Flower-loadable keys, safe files."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedcustomer.deploy.pki import Certificates, check_node_private_key, make_dev_certificates, make_node_keys
from fedcustomer.errors import ConfigError, KeyMaterialError


def test_server_certificate_is_signed_by_the_ca_and_names_the_hosts(tmp_path):
    certs = make_dev_certificates(tmp_path, ["localhost", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_private_keys_are_readable_only_by_the_owner(tmp_path):
    certs = make_dev_certificates(tmp_path)
    for key in (certs.server_key, certs.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_existing_certificates_are_not_overwritten_without_force(tmp_path):
    first = make_dev_certificates(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        make_dev_certificates(tmp_path)
    assert first.ca_cert.read_bytes() == before
    make_dev_certificates(tmp_path, overwrite=True)
    assert first.ca_cert.read_bytes() != before


def test_missing_certificate_file_is_named_in_the_error(tmp_path):
    certs = make_dev_certificates(tmp_path)
    certs.server_key.unlink()
    with pytest.raises(KeyMaterialError, match="server.key"):
        Certificates.in_dir(tmp_path).check()


def test_node_keys_are_openssh_ecdsa_as_flower_expects(tmp_path):
    keys = make_node_keys(tmp_path, comment="bank 0")
    private = load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert keys.fingerprint().startswith("SHA256:")
    check_node_private_key(keys.private_key)


def test_node_keys_refuse_to_replace_a_registered_pair_without_force(tmp_path):
    keys = make_node_keys(tmp_path)
    before = keys.public_key.read_bytes()
    with pytest.raises(KeyMaterialError, match="--force"):
        make_node_keys(tmp_path)
    assert keys.public_key.read_bytes() == before


def test_world_readable_or_wrong_node_key_is_refused(tmp_path):
    keys = make_node_keys(tmp_path)
    keys.private_key.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        check_node_private_key(keys.private_key)
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    with pytest.raises(KeyMaterialError, match="OpenSSH"):
        check_node_private_key(bad)
    with pytest.raises(KeyMaterialError, match="node keys"):
        check_node_private_key(tmp_path / "absent")
