"""Link, IP and TCP header decoding.

``decode(linktype, data)`` returns either a tuple
``(src, dst, sport, dport, seq, ack, flags, payload, missing, tso)`` or, for a
packet netmon cannot use, a reason string from ``SKIP_REASONS``. ``src`` and
``dst`` are the raw 4- or 16-byte addresses. ``missing`` is the number of TCP
payload bytes that the IP header proves but the snaplen cut off. ``tso`` is
true for frames captured before segmentation offload, whose IP length field
is 0, so they are decoded from the captured length.

The function allocates one tuple and one payload slice per packet, because
everything else on the per-packet path is kept to integer and slice work.
"""

import struct

# Packets netmon read but could not use, by reason. Exported as
# netmon_packets_skipped_total{reason}.
SKIP_REASONS = (
    "unsupported_link",  # link type netmon does not decode
    "not_ip",            # link layer carries something other than IPv4/IPv6
    "not_tcp",           # IP packet with another transport
    "fragment",          # IPv4/IPv6 fragment: counted, never reassembled
    "truncated",         # the snaplen cut the link, IP or TCP header
    "malformed",         # header fields that contradict each other
    "other_port",        # TCP, but not to or from a monitored port
    "after_close",       # data on a connection after its RST or past its FIN
)

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276
# Some systems write raw IP under their DLT value instead of LINKTYPE_RAW.
LINKTYPE_RAW_ALIASES = (12, 14)

LINKTYPE_NAMES = {
    LINKTYPE_NULL: "BSD loopback",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_C_HDLC: "Cisco HDLC",
    LINKTYPE_LOOP: "OpenBSD loopback",
    LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_NFLOG: "Linux NFLOG",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
ETH_PPPOE_SESSION = 0x8864
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057

# BSD loopback address-family values for IPv6 differ by system.
NULL_AF_INET = 2
NULL_AF_INET6 = (10, 24, 28, 30)

IPV6_EXTENSION_HEADERS = (0, 43, 60, 135, 139, 140)  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
IPV6_FRAGMENT = 44
IPV6_AH = 51
IP_PROTO_TCP = 6

_U16 = struct.Struct("!H").unpack_from
_TCP = struct.Struct("!HHIIBB").unpack_from


def is_supported_linktype(linktype):
    return linktype in LINKTYPE_NAMES or linktype in LINKTYPE_RAW_ALIASES


def supported_linktype_names():
    return ", ".join(LINKTYPE_NAMES[linktype] for linktype in sorted(LINKTYPE_NAMES))


def linktype_name(linktype):
    return LINKTYPE_NAMES.get(linktype, f"link type {linktype}")


def decode(linktype, data):
    """Decode one captured frame down to its TCP segment (see module docstring)."""
    if linktype == LINKTYPE_ETHERNET:
        # Fast path for untagged Ethernet, IPv4 without options, unfragmented
        # TCP with a whole IP payload: one function instead of four.
        if (
            len(data) >= 54
            and data[12] == 8 and data[13] == 0 and data[14] == 0x45
            and data[23] == IP_PROTO_TCP
            and not (data[20] & 0x3F or data[21])
        ):
            total_len = (data[16] << 8) | data[17]
            ip_end = 14 + total_len
            if 40 <= total_len and ip_end <= len(data):
                sport, dport, seq, ack, data_offset, flags = _TCP(data, 34)
                start = 34 + (data_offset >> 4) * 4
                if 54 <= start <= ip_end:
                    if not flags & TCP_ACK:
                        ack = None
                    return data[26:30], data[30:34], sport, dport, seq, ack, flags, data[start:ip_end], 0, False
        return _ethernet(data, 12)
    if linktype == LINKTYPE_LINUX_SLL:
        return _by_ethertype(data, 16, _U16(data, 14)[0] if len(data) >= 16 else -1)
    if linktype == LINKTYPE_LINUX_SLL2:
        return _by_ethertype(data, 20, _U16(data, 0)[0] if len(data) >= 20 else -1)
    if linktype == LINKTYPE_RAW or linktype in LINKTYPE_RAW_ALIASES or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
        return _ip(data, 0)
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        return _null(data)
    if linktype == LINKTYPE_C_HDLC:
        return _by_ethertype(data, 4, _U16(data, 2)[0] if len(data) >= 4 else -1)
    if linktype == LINKTYPE_NFLOG:
        return _nflog(data)
    return "unsupported_link"


def _ethernet(data, type_offset):
    if len(data) < type_offset + 2:
        return "truncated"
    ethertype = (data[type_offset] << 8) | data[type_offset + 1]
    offset = type_offset + 2
    while ethertype in ETH_VLAN_TAGS:
        if len(data) < offset + 4:
            return "truncated"
        ethertype = (data[offset + 2] << 8) | data[offset + 3]
        offset += 4
    if ethertype == ETH_PPPOE_SESSION:
        # 6-byte PPPoE header, then the PPP protocol number: 2 bytes, or 1
        # when protocol-field compression is on (the first byte is odd then).
        if len(data) < offset + 8:
            return "truncated"
        if data[offset + 6] & 1:
            protocol = data[offset + 6]
            offset += 7
        else:
            protocol = (data[offset + 6] << 8) | data[offset + 7]
            offset += 8
        if protocol == PPP_IPV4:
            return _ipv4(data, offset)
        if protocol == PPP_IPV6:
            return _ipv6(data, offset)
        return "not_ip"
    return _by_ethertype(data, offset, ethertype)


def _by_ethertype(data, offset, ethertype):
    if ethertype == ETH_IPV4:
        return _ipv4(data, offset)
    if ethertype == ETH_IPV6:
        return _ipv6(data, offset)
    if ethertype in ETH_VLAN_TAGS or ethertype == ETH_PPPOE_SESSION:
        return _ethernet(data, offset - 2)
    if ethertype < 0:
        return "truncated"
    return "not_ip"


def _null(data):
    if len(data) < 4:
        return "truncated"
    # The family is in the writing host's byte order, so try both.
    family = int.from_bytes(data[:4], "little")
    if family > 0xFFFF:
        family = int.from_bytes(data[:4], "big")
    if family == NULL_AF_INET:
        return _ipv4(data, 4)
    if family in NULL_AF_INET6:
        return _ipv6(data, 4)
    return "not_ip"


def _nflog(data):
    # NFLOG: 4-byte header (family, version, resource id), then TLVs with
    # little-endian 16-bit length and type, each padded to 4 bytes; type 9
    # carries the packet starting at the IP header.
    if len(data) < 4:
        return "truncated"
    pos = 4
    while pos + 4 <= len(data):
        length = data[pos] | (data[pos + 1] << 8)
        tlv_type = data[pos + 2] | (data[pos + 3] << 8)
        if length < 4:
            return "malformed"
        if tlv_type == 9:
            return _ip(data[pos + 4:pos + length], 0)
        pos += (length + 3) & ~3
    return "not_ip"


def _ip(data, offset):
    if len(data) <= offset:
        return "truncated"
    version = data[offset] >> 4
    if version == 4:
        return _ipv4(data, offset)
    if version == 6:
        return _ipv6(data, offset)
    return "not_ip"


def _ipv4(data, offset):
    captured = len(data) - offset
    if captured < 20:
        return "truncated"
    header_len = (data[offset] & 0x0F) * 4
    if data[offset] >> 4 != 4 or header_len < 20:
        return "malformed"
    if captured < header_len:
        return "truncated"
    # More-fragments flag or a non-zero fragment offset.
    if ((data[offset + 6] << 8) | data[offset + 7]) & 0x3FFF:
        return "fragment"
    if data[offset + 9] != IP_PROTO_TCP:
        return "not_tcp"
    total_len = (data[offset + 2] << 8) | data[offset + 3]
    tso = False
    if total_len == 0:
        # Captured before segmentation offload: the kernel left the length
        # for the NIC to fill in, so the captured length is all there is.
        total_len = captured
        tso = True
    elif total_len < header_len:
        return "malformed"
    return _tcp(data, offset + header_len, offset + total_len, data[offset + 12:offset + 16], data[offset + 16:offset + 20], tso)


def _ipv6(data, offset):
    captured = len(data) - offset
    if captured < 40:
        return "truncated"
    payload_len = (data[offset + 4] << 8) | data[offset + 5]
    next_header = data[offset + 6]
    src = data[offset + 8:offset + 24]
    dst = data[offset + 24:offset + 40]
    tso = False
    if payload_len == 0:
        # Jumbogram or captured before segmentation offload.
        end = len(data)
        tso = True
    else:
        end = offset + 40 + payload_len
    pos = offset + 40
    while next_header != IP_PROTO_TCP:
        if next_header == IPV6_FRAGMENT:
            return "fragment"
        if next_header in IPV6_EXTENSION_HEADERS:
            if len(data) < pos + 2:
                return "truncated"
            next_header, ext_len = data[pos], (data[pos + 1] + 1) * 8
        elif next_header == IPV6_AH:
            if len(data) < pos + 2:
                return "truncated"
            next_header, ext_len = data[pos], (data[pos + 1] + 2) * 4
        else:
            return "not_tcp"
        pos += ext_len
        if pos > end:
            return "malformed"
    return _tcp(data, pos, end, src, dst, tso)


def _tcp(data, offset, ip_end, src, dst, tso):
    if len(data) < offset + 20:
        return "truncated"
    sport, dport, seq, ack, data_offset, flags = _TCP(data, offset)
    header_len = (data_offset >> 4) * 4
    if header_len < 20 or offset + header_len > ip_end:
        return "malformed"
    start = offset + header_len
    if len(data) < start:
        return "truncated"
    captured_end = len(data)
    if ip_end <= captured_end:
        # Ethernet pads short frames: the IP length, not the frame, ends the payload.
        missing = 0
        payload = data[start:ip_end]
    else:
        # The snaplen cut the payload: the IP length proves how much is gone.
        missing = ip_end - captured_end
        payload = data[start:]
    if not (flags & TCP_ACK):
        ack = None
    return src, dst, sport, dport, seq, ack, flags, payload, missing, tso
