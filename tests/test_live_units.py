"""Small live-agent pieces that need no capture: filter text and user names."""

import os

from netmon import live
from netmon.capture_live import pcap_filter_expression


def test_filter_matches_vlan_on_ethernet():
    expression = pcap_filter_expression([8080, 80], linktype=1)
    assert expression == "(tcp and (port 80 or port 8080)) or (vlan and tcp and (port 80 or port 8080))"


def test_filter_skips_vlan_on_cooked_capture():
    # libpcap rejects "vlan" on Linux cooked captures (--iface any).
    for linktype in (113, 276):
        assert pcap_filter_expression([8080], linktype=linktype) == "tcp and (port 8080)"


def test_user_name_without_passwd_entry(monkeypatch):
    def missing(uid):
        raise KeyError(uid)

    monkeypatch.setattr(live.pwd, "getpwuid", missing)
    assert live.user_name() == str(os.geteuid())
