"""FERRY_TRUSTED_PROXIES: a list of addresses and networks, checked when loaded."""

from __future__ import annotations

import pytest

from ferry.settings import SettingsError, load_settings


def test_addresses_and_networks_are_read_as_uvicorn_takes_them() -> None:
    settings = load_settings(trusted_proxies=" 127.0.0.1, 10.1.2.3/8 ,::1,")
    assert settings.trusted_proxies == "127.0.0.1,10.0.0.0/8,::1"


def test_a_name_that_is_no_address_is_refused_with_the_setting_named() -> None:
    with pytest.raises(SettingsError, match=r"invalid setting FERRY_TRUSTED_PROXIES: .*'nginx.local' is not an IP"):
        load_settings(trusted_proxies="127.0.0.1,nginx.local")
