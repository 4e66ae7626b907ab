"""Serving to a class: loopback by default, a teacher key for training beyond it."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from xrcompare import access


def test_the_app_listens_on_loopback_by_default():
    text = (REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    server = text.split("[server]", 1)[1].split("\n[", 1)[0]
    address = re.search(r'^address\s*=\s*"([^"]*)"', server, re.MULTILINE)
    assert address and access.is_loopback(address.group(1))


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("", False), (None, False),
    ("192.168.1.20", False), ("teacher-laptop.local", False)])
def test_loopback_addresses(address, loopback):
    assert access.is_loopback(address) is loopback


def test_training_access_rules():
    local = access.training_access("127.0.0.1", None)
    assert local.allowed and not local.needs_key
    open_no_key = access.training_access("0.0.0.0", None)
    assert not open_no_key.allowed and access.TEACHER_KEY_VARIABLE in open_no_key.reason
    assert "\n" not in open_no_key.reason
    for address in ("127.0.0.1", "0.0.0.0", None):
        keyed = access.training_access(address, "s3cret")
        assert keyed.allowed and keyed.needs_key


def test_the_key_comes_from_the_environment_then_the_secrets():
    assert access.teacher_key_from({access.TEACHER_KEY_VARIABLE: " k1 "}, {"teacher_key": "k2"}) \
        == "k1"
    assert access.teacher_key_from({}, {"teacher_key": "k2"}) == "k2"
    assert access.teacher_key_from({access.TEACHER_KEY_VARIABLE: ""}, {}) is None

    class Broken:
        def get(self, *args):
            raise FileNotFoundError("no secrets.toml")

    assert access.teacher_key_from({}, Broken()) is None


def test_key_comparison():
    assert access.key_matches("s3cret", "s3cret")
    assert access.key_matches(" s3cret ", "s3cret")  # pasted with spaces
    assert not access.key_matches("s3cre", "s3cret")
    assert not access.key_matches("", "s3cret") and not access.key_matches(None, "s3cret")
    assert not access.key_matches("anything", None)


def test_training_processes_do_not_inherit_the_teacher_key(monkeypatch):
    from xrcompare import ray_engine

    monkeypatch.setenv(access.TEACHER_KEY_VARIABLE, "s3cret")
    monkeypatch.setenv(access.TEACHER_KEY_SECRET, "s3cret")  # where Streamlit puts a secret
    for environment in (ray_engine.job_environment(), ray_engine._ray_environment()):
        assert "s3cret" not in environment.values()
