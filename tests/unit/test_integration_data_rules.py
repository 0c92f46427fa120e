"""The pure rules of integration data maps and the INGESTD_TRUST_PROXY setting."""

from __future__ import annotations

import pytest

from shared import integration_data as idata
from shared.config import Settings
from shared.errors import ApiError, ConfigError


def test_trust_proxy_setting() -> None:
    assert Settings.from_env({}).trust_proxy is False
    assert Settings.from_env({"INGESTD_TRUST_PROXY": "1"}).trust_proxy is True
    s = Settings.from_env({"INGESTD_TRUST_PROXY": "1"})
    assert Settings.from_env(s.server_env()) == s
    with pytest.raises(ConfigError, match="INGESTD_TRUST_PROXY"):
        Settings.from_env({"INGESTD_TRUST_PROXY": "yes"})


def test_vendor_ids_are_lower_cased_and_checked() -> None:
    assert idata.vendor_id("AcmeLtd") == idata.vendor_id("acmeltd") == "acmeltd"
    for bad in ("", "-a", "a/b", "a" * 65, "é"):
        with pytest.raises(ApiError) as e:
            idata.vendor_id(bad)
        assert e.value.code == "invalid_vendor_id"


def test_xml_map_keeps_order_and_drops_links() -> None:
    doc = (
        b'<a:XIntegrationData xmlns:a="urn:x"><B>2</B><A>1</A><Link rel="self"/>'
        b"</a:XIntegrationData>"
    )
    m = idata.from_xml(doc, "v")
    assert list(m.items()) == [("B", "2"), ("A", "1")]
    assert idata.from_json({"B": "2", "A": "1", "Link": [{"rel": "self"}]}, "v") == m


def test_answers_escape_text_and_attributes() -> None:
    out = idata.instance_xml({"A": "<&>"}, 'http://h/"x"').decode()
    assert "<A>&lt;&amp;&gt;</A>" in out and 'href="http://h/&quot;x&quot;"' in out
    assert idata.from_xml(out.encode(), "v") == {"A": "<&>"}
