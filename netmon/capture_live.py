"""Live packet sources: libpcap through pcapy-ng, or an AF_PACKET socket.

Both yield the same ``(ts, linktype, data, wirelen)`` tuples as the file
readers in ``netmon.capture``, so the pipeline cannot tell live packets from
a file. ``PcapCapture`` needs the pcapy-ng package and costs far less per
packet (docs/live.md has the figures). ``LiveCapture`` uses only the standard
library:

- A classic BPF program built here (``tcp_port_filter``) runs in the kernel
  and passes only TCP segments to or from the monitored ports, over IPv4 or
  IPv6, untagged or with one or two in-band VLAN tags. Tags the kernel has
  already moved out of the frame are put back from ``PACKET_AUXDATA``, as
  libpcap does.
- Ethernet and loopback interfaces are read as raw frames (link type
  Ethernet). ``any`` and other interface types are read without their link
  header, and a Linux cooked (SLL) header is put in front, as libpcap does.
- On loopback every packet passes the tap twice (sent and received). The
  filter rejects the outgoing copy, so each packet is seen once.
- Timestamps are the kernel's receive time (``SO_TIMESTAMPNS``) cut to
  microseconds, exactly what a microsecond pcap file stores, so the live
  pipeline and ``netmon analyze`` of a written file see the same values.
"""
import ctypes
import os
import re
import socket
import struct
import threading

from .decode import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, decode

# Linux constants from <linux/if_packet.h>, <linux/filter.h> and
# <asm-generic/socket.h>; the socket module does not export all of them.
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772

# Largest frame kept, as libpcap's default snaplen; GRO can merge segments
# into frames of up to 64 KiB (more with BIG TCP), which fit.
SNAPLEN = 262144

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)

_TIMESTAMP = struct.Struct("qq")
# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid.
_AUXDATA = struct.Struct("IIIHHHH")
_STATISTICS = struct.Struct("II")
_SLL_HEADER = struct.Struct("!HHH8sH")
_VLAN_TAG = struct.Struct("!HH")


class LiveCaptureError(Exception):
    """A capture that could not be opened or read, with a message that names the fix."""


class CaptureLostError(LiveCaptureError):
    """Reading failed because the interface went down or away; ``recover()`` may resume it."""


PERMISSION_MESSAGE = (
    "opening a packet capture failed: permission denied (needs root or CAP_NET_RAW); "
    "run as root, grant the capability with `setcap cap_net_raw,cap_net_admin=eip "
    "<real path of the python binary>`, or set AmbientCapabilities=CAP_NET_RAW "
    "CAP_NET_ADMIN in the systemd unit"
)

# pcap_activate() failures (<pcap/pcap.h>).
PCAP_ERROR_PERM_DENIED = -8
PCAP_ACTIVATE_ERRORS = {
    -1: "generic libpcap error",
    -5: "no such device",
    -6: "monitor mode not supported",
    -7: "operation not permitted or unsupported on this device",
    -9: "interface is not up",
    -11: "timestamp precision not supported",
}


# -- BPF ---------------------------------------------------------------------

# Classic BPF opcodes (<linux/bpf_common.h>).
BPF_LD_W_ABS = 0x20
BPF_LD_H_ABS = 0x28
BPF_LD_B_ABS = 0x30
BPF_LD_H_IND = 0x48
BPF_LDX_B_MSH = 0xB1
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# Loads at these offsets read packet metadata instead of packet bytes.
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8


class _Program:
    """A tiny assembler for classic BPF with forward jumps to named labels."""

    def __init__(self):
        self.code = []
        self.labels = {}

    def label(self, name):
        self.labels[name] = len(self.code)

    def load(self, opcode, k):
        self.code.append((opcode, None, None, k & 0xFFFFFFFF))

    def jump(self, opcode, k, if_true, if_false):
        """Compare A with k and continue at label ``if_true`` or ``if_false`` (None: next)."""
        self.code.append((opcode, if_true, if_false, k & 0xFFFFFFFF))

    def ret(self, k):
        self.code.append((BPF_RET_K, None, None, k))

    def assemble(self):
        instructions = []
        for index, (opcode, if_true, if_false, k) in enumerate(self.code):
            offsets = []
            for target in (if_true, if_false):
                if target is None:
                    offsets.append(0)
                    continue
                offset = self.labels[target] - index - 1
                if not 0 <= offset <= 255:
                    raise ValueError(f"BPF jump to {target} out of range ({offset})")
                offsets.append(offset)
            instructions.append((opcode, offsets[0], offsets[1], k))
        return instructions


def tcp_port_filter(ports, cooked, skip_outgoing_ifindex=None):
    """Build a classic BPF program that accepts TCP segments to or from ``ports``.

    ``cooked`` programs run on frames without a link header, where the
    network header is at offset 0 and the EtherType comes from packet
    metadata. The others run on Ethernet frames. Non-first IPv4 fragments and IPv6 packets
    with extension headers before TCP are rejected, as tcpdump's ``tcp port N``
    does. ``skip_outgoing_ifindex`` rejects the outgoing copy of packets on
    that interface (the loopback, which also delivers each packet inbound);
    0 means the socket's only interface.
    """
    ports = sorted(set(ports))
    program = _Program()
    if skip_outgoing_ifindex is not None:
        if skip_outgoing_ifindex:
            program.load(BPF_LD_W_ABS, SKF_AD_OFF + SKF_AD_IFINDEX)
            program.jump(BPF_JEQ_K, skip_outgoing_ifindex, None, "link")
        program.load(BPF_LD_H_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
        program.jump(BPF_JEQ_K, PACKET_OUTGOING, "reject", None)
    program.label("link")

    if cooked:
        program.load(BPF_LD_H_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL)
        program.jump(BPF_JEQ_K, ETHERTYPE_IPV4, "ipv4_0", None)
        program.jump(BPF_JEQ_K, ETHERTYPE_IPV6, "ipv6_0", "reject")
        bases = (0,)
    else:
        # Untagged, one tag, two tags (QinQ): the EtherType sits at 12, 16, 20.
        bases = (14, 18, 22)
        for depth, base in enumerate(bases):
            program.label(f"ethertype_{base}")
            program.load(BPF_LD_H_ABS, base - 2)
            program.jump(BPF_JEQ_K, ETHERTYPE_IPV4, f"ipv4_{base}", None)
            if depth == len(bases) - 1:
                program.jump(BPF_JEQ_K, ETHERTYPE_IPV6, f"ipv6_{base}", "reject")
                break
            program.jump(BPF_JEQ_K, ETHERTYPE_IPV6, f"ipv6_{base}", None)
            for tpid in VLAN_ETHERTYPES[:-1]:
                program.jump(BPF_JEQ_K, tpid, f"ethertype_{bases[depth + 1]}", None)
            program.jump(BPF_JEQ_K, VLAN_ETHERTYPES[-1], f"ethertype_{bases[depth + 1]}", "reject")

    for base in bases:
        program.label(f"ipv4_{base}")
        program.load(BPF_LD_B_ABS, base + 9)
        program.jump(BPF_JEQ_K, socket.IPPROTO_TCP, None, "reject")
        program.load(BPF_LD_H_ABS, base + 6)
        program.jump(BPF_JSET_K, 0x1FFF, "reject", None)
        program.load(BPF_LDX_B_MSH, base)  # X = IPv4 header length
        for port_offset in (0, 2):
            program.load(BPF_LD_H_IND, base + port_offset)
            for port in ports:
                program.jump(BPF_JEQ_K, port, "accept", None)
        program.ret(0)

        program.label(f"ipv6_{base}")
        program.load(BPF_LD_B_ABS, base + 6)
        program.jump(BPF_JEQ_K, socket.IPPROTO_TCP, None, "reject")
        for port_offset in (40, 42):
            program.load(BPF_LD_H_ABS, base + port_offset)
            for port in ports:
                program.jump(BPF_JEQ_K, port, "accept", None)
        program.ret(0)

    program.label("accept")
    program.ret(SNAPLEN)
    program.label("reject")
    program.ret(0)
    return program.assemble()


def _attach_filter(sock, instructions):
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in instructions)
    buffer = ctypes.create_string_buffer(code, len(code))
    program = struct.pack("HP", len(instructions), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)


# -- interfaces --------------------------------------------------------------

SYS_CLASS_NET = "/sys/class/net"


def interface_names():
    try:
        return sorted(os.listdir(SYS_CLASS_NET))
    except OSError:
        return sorted(name for _, name in socket.if_nameindex())


def _interface_type(name):
    try:
        with open(os.path.join(SYS_CLASS_NET, name, "type")) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


IFF_UP = 0x1


def interface_problem(name, ifindex):
    """Return why the capture bound to ``name`` at ``ifindex`` cannot read, or None when it can."""
    if name == "any":
        return None
    try:
        with open(os.path.join(SYS_CLASS_NET, name, "flags")) as file:
            flags = int(file.read().strip(), 16)
        current = socket.if_nametoindex(name)
    except (OSError, ValueError):
        return f"interface {name!r} not found"
    if not flags & IFF_UP:
        return f"interface {name!r} is down"
    if current != ifindex:
        return f"interface {name!r} was re-created (index {ifindex}, now {current})"
    return None


def recover_capture(capture, fileno):
    """Resume ``capture`` (either class) after its interface came back; return None, or why it failed.

    A packet socket stays bound while its interface is down and receives
    again once it is up, so nothing is to be done then. A re-created
    interface has a new index: the socket ``fileno`` is bound to it again,
    and when the kernel rejects that (a socket in a fan-out group), a new
    capture is opened, which needs the privileges of the start.
    """
    problem = capture.check_interface()
    # Only a re-created interface that is up gets past this check.
    if problem is None or "re-created" not in problem:
        return problem
    try:
        capture.ifindex = _rebind(fileno, capture.interface)
        return None
    except OSError as error:
        rebind_error = error.strerror or str(error)
    fresh = type(capture)(capture.interface, capture.ports, capture.buffer_bytes)
    try:
        fresh.open()
    except LiveCaptureError as error:
        return f"{problem}; binding the capture to it failed ({rebind_error}), and so did opening a new one: {error}"
    capture.adopt(fresh)
    return None


def _rebind(fileno, name):
    """Bind the packet socket ``fileno`` to the current interface ``name``; raise OSError.

    bind() needs no capability, unlike opening a packet socket, so this works
    after the privilege drop. The kernel rejects it (EINVAL) for a socket in
    a fan-out group.
    """
    sock = socket.socket(fileno=os.dup(fileno))
    try:
        sock.bind((name, ETH_P_ALL))
    finally:
        sock.close()
    return socket.if_nametoindex(name)


def _loopback_index():
    for name in interface_names():
        if _interface_type(name) == ARPHRD_LOOPBACK:
            return socket.if_nametoindex(name)
    return None


# -- capture -----------------------------------------------------------------


class LiveCapture:
    """An open AF_PACKET socket on one interface, or on all with ``any``."""

    backend = "afpacket"

    def __init__(self, interface, ports, buffer_bytes):
        self.interface = interface
        self.ports = tuple(sorted(set(ports)))
        self.buffer_bytes = buffer_bytes
        self.sock = None
        self.linktype = None
        self.cooked = False
        self.kernel_buffer_bytes = None
        self.ifindex = 0
        # Times recover() replaced the socket; fan-out workers join the group again then.
        self.reopened = 0
        self.received = 0
        self.dropped = 0
        self._stats_lock = threading.Lock()
        self._frame = bytearray(SNAPLEN)
        self._view = memoryview(self._frame)
        self._ancillary_size = socket.CMSG_SPACE(_TIMESTAMP.size) + socket.CMSG_SPACE(_AUXDATA.size)

    def open(self):
        """Open the socket, attach the filter and bind it; raise LiveCaptureError."""
        interface = self.interface
        if interface == "any":
            ifindex = 0
            self.cooked = True
            skip_outgoing = _loopback_index()
        else:
            if interface not in interface_names():
                raise LiveCaptureError(
                    f"interface {interface!r} not found; available interfaces: "
                    f"{', '.join(interface_names())}, any"
                )
            ifindex = socket.if_nametoindex(interface)
            link_type = _interface_type(interface)
            self.cooked = link_type not in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
            skip_outgoing = 0 if link_type == ARPHRD_LOOPBACK else None
        self.linktype = LINKTYPE_LINUX_SLL if self.cooked else LINKTYPE_ETHERNET

        kind = socket.SOCK_DGRAM if self.cooked else socket.SOCK_RAW
        try:
            # Protocol 0 receives nothing until bind(), so no packet can slip
            # in before the filter is attached. Python cannot bind to "all
            # interfaces" (ifindex 0), so ``any`` subscribes at creation.
            sock = socket.socket(socket.AF_PACKET, kind, 0 if ifindex else socket.htons(ETH_P_ALL))
        except PermissionError:
            raise LiveCaptureError(PERMISSION_MESSAGE) from None
        try:
            self._set_buffer(sock)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setblocking(False)
            if ifindex:
                _attach_filter(sock, tcp_port_filter(self.ports, self.cooked, skip_outgoing))
                sock.bind((interface, ETH_P_ALL))
            else:
                # Packets queued before a filter is attached passed no
                # filter: reject everything, discard the queue, then filter.
                _attach_filter(sock, [(BPF_RET_K, 0, 0, 0)])
                _discard_queue(sock)
                _attach_filter(sock, tcp_port_filter(self.ports, self.cooked, skip_outgoing))
        except OSError as error:
            sock.close()
            raise LiveCaptureError(f"setting up the capture on {interface} failed: {error.strerror or error}") from None
        self.sock = sock
        self.ifindex = ifindex
        # Start the counters from zero: the discarded packets are no news.
        self.read_statistics()
        self.received = self.dropped = 0

    def _set_buffer(self, sock):
        # SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.buffer_bytes)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_bytes)
        # The kernel reports double the value set, to cover its bookkeeping.
        self.kernel_buffer_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def check_interface(self):
        """Return why the capture cannot read its interface, or None."""
        return interface_problem(self.interface, self.ifindex)

    def recover(self):
        """Resume after the interface came back; return None, or the reason it cannot yet."""
        return recover_capture(self, self.sock.fileno())

    def adopt(self, fresh):
        """Replace the socket with the one of ``fresh``, an open LiveCapture; keep the counters."""
        received, dropped = self.read_statistics()
        self.close()
        self.sock, self.ifindex, self.kernel_buffer_bytes = fresh.sock, fresh.ifindex, fresh.kernel_buffer_bytes
        fresh.sock = None
        self.received, self.dropped = received, dropped
        self.reopened += 1

    def read_batch(self, handle_packet, max_packets):
        """Pass queued packets to ``handle_packet``; return how many, 0 when the queue is empty.

        Stops after ``max_packets`` so that the caller's periodic work runs
        under sustained load.
        """
        recvmsg_into = self.sock.recvmsg_into
        buffers = [self._frame]
        ancillary_size = self._ancillary_size
        view = self._view
        linktype = self.linktype
        cooked = self.cooked
        count = 0
        while count < max_packets:
            try:
                length, ancillary, _, address = recvmsg_into(buffers, ancillary_size)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as error:
                # ENETDOWN or ENODEV, reported once when the interface goes.
                raise CaptureLostError(f"reading from {self.interface} failed: {error.strerror or error}") from None
            seconds = microseconds = 0
            wirelen = length
            vlan = None
            for level, kind, value in ancillary:
                if level == SOL_PACKET:
                    status, wirelen, _, _, _, tci, tpid = _AUXDATA.unpack(value)
                    if status & TP_STATUS_VLAN_VALID:
                        vlan = (tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
                elif kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESTAMP.unpack(value)
                    microseconds = nanoseconds // 1000
            if cooked:
                _, protocol, packet_type, hardware_type, hardware_address = address
                data = _SLL_HEADER.pack(
                    packet_type, hardware_type, len(hardware_address), hardware_address[:8], protocol
                ) + view[:length]
                wirelen += _SLL_HEADER.size
            elif vlan is not None:
                data = b"".join((view[:12], _VLAN_TAG.pack(*vlan), view[12:length]))
                wirelen += _VLAN_TAG.size
            else:
                data = bytes(view[:length])
            handle_packet(seconds + microseconds * 1e-6, linktype, data, wirelen)
            count += 1
        return count

    def read_statistics(self):
        """Add the kernel's counters since the last call; return (received, dropped) since open.

        ``received`` counts packets the filter accepted, dropped ones
        included. The kernel resets its counters on every read, hence the
        lock: the scrape thread and the capture loop both call this. The
        read needs no privilege, so it works after privileges are dropped.
        """
        with self._stats_lock:
            if self.sock is not None:
                packets, drops = _STATISTICS.unpack(
                    self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATISTICS.size)
                )
                self.received += packets
                self.dropped += drops
            return self.received, self.dropped


class PcapCapture:
    """The same interface as ``LiveCapture``, through libpcap (pcapy-ng from PyPI).

    libpcap reads a memory-mapped ring (TPACKET_V3), so it needs no system
    call per packet; see docs/live.md for the measured cost of both.
    """

    # Milliseconds a partly filled ring block waits before it is handed over,
    # which bounds the delay from packet to metric when traffic is light.
    BLOCK_TIMEOUT_MS = 100
    backend = "pcap"

    def __init__(self, interface, ports, buffer_bytes):
        self.interface = interface
        self.ports = tuple(sorted(set(ports)))
        self.buffer_bytes = buffer_bytes
        self.handle = None
        self.linktype = None
        self.kernel_buffer_bytes = buffer_bytes
        self.ifindex = 0
        # Times recover() replaced the handle; fan-out workers join the group again then.
        self.reopened = 0
        self.received = 0
        self.dropped = 0
        # libpcap's counters at the last reopen, as its new handle starts from 0.
        self._base_received = 0
        self._base_dropped = 0

    def open(self):
        import pcapy

        interface = self.interface
        if interface != "any" and interface not in interface_names():
            raise LiveCaptureError(
                f"interface {interface!r} not found; available interfaces: {', '.join(interface_names())}, any"
            )
        try:
            handle = pcapy.create(interface)
            handle.set_snaplen(SNAPLEN)
            handle.set_buffer_size(self.buffer_bytes)
            handle.set_timeout(self.BLOCK_TIMEOUT_MS)
            # pcapy-ng returns pcap_activate()'s status instead of raising.
            status = handle.activate()
        except pcapy.PcapError as error:
            raise LiveCaptureError(f"opening {interface} with libpcap failed: {error}") from None
        if status is not None and status < 0:
            if status == PCAP_ERROR_PERM_DENIED:
                raise LiveCaptureError(PERMISSION_MESSAGE)
            reason = PCAP_ACTIVATE_ERRORS.get(status, f"libpcap error {status}")
            raise LiveCaptureError(f"opening {interface} with libpcap failed: {reason}")
        try:
            handle.setfilter(pcap_filter_expression(self.ports, handle.datalink()))
        except pcapy.PcapError as error:
            handle.close()
            raise LiveCaptureError(f"compiling the capture filter failed: {error}") from None
        handle.setnonblock(1)
        self.handle = handle
        self.linktype = handle.datalink()
        if interface != "any":
            self.ifindex = socket.if_nametoindex(interface)

    def fileno(self):
        return self.handle.getfd()

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def check_interface(self):
        """Return why the capture cannot read its interface, or None."""
        return interface_problem(self.interface, self.ifindex)

    def recover(self):
        """Resume after the interface came back; return None, or the reason it cannot yet.

        libpcap's socket is bound again with its ring and filter in place.
        """
        return recover_capture(self, self.handle.getfd())

    def adopt(self, fresh):
        """Replace the handle with the one of ``fresh``, an open PcapCapture; keep the counters."""
        received, dropped = self.read_statistics()
        self.close()
        self.handle, self.ifindex = fresh.handle, fresh.ifindex
        fresh.handle = None
        self._base_received, self._base_dropped = received, dropped
        self.reopened += 1

    def read_batch(self, handle_packet, max_packets):
        import pcapy

        linktype = self.linktype

        def deliver(header, data):
            seconds, microseconds = header.getts()
            handle_packet(seconds + microseconds * 1e-6, linktype, data, header.getlen())

        count = 0
        while count < max_packets:
            try:
                delivered = self.handle.dispatch(max_packets - count, deliver)
            except pcapy.PcapError as error:
                # libpcap reports "The interface went down" or "...disappeared".
                raise CaptureLostError(f"reading from {self.interface} failed: {error}") from None
            if delivered <= 0:
                break
            count += delivered
        return count

    def read_statistics(self):
        """Return libpcap's (received, dropped) since open.

        NOTE: on loopback libpcap's received count includes the outgoing
        copy of each packet, which it discards after counting, so it is
        about twice the packets delivered.
        """
        if self.handle is not None:
            received, dropped, _ = self.handle.stats()
            self.received, self.dropped = self._base_received + received, self._base_dropped + dropped
        return self.received, self.dropped


# Link types whose frames cannot carry VLAN tags in the filter's view:
# libpcap rejects "vlan" there (Linux cooked v1 and v2, from --iface any).
LINKTYPES_WITHOUT_VLAN = (113, 276)


def pcap_filter_expression(ports, linktype=None):
    """Return the libpcap filter for TCP to or from ``ports``, untagged or in a VLAN."""
    match = "tcp and (" + " or ".join(f"port {port}" for port in sorted(set(ports))) + ")"
    if linktype in LINKTYPES_WITHOUT_VLAN:
        return match
    return f"({match}) or (vlan and {match})"


BACKENDS = ("auto", "pcap", "afpacket")


def open_capture(backend, interface, ports, buffer_bytes):
    """Open a capture with ``backend``; ``auto`` is libpcap when pcapy-ng is installed."""
    if backend == "auto":
        try:
            import pcapy  # noqa: F401
        except ImportError:
            backend = "afpacket"
        else:
            backend = "pcap"
    if backend == "pcap":
        try:
            import pcapy  # noqa: F401
        except ImportError:
            raise LiveCaptureError(
                "--capture-backend pcap needs the pcapy-ng package: pip install pcapy-ng"
            ) from None
        capture = PcapCapture(interface, ports, buffer_bytes)
    else:
        capture = LiveCapture(interface, ports, buffer_bytes)
    capture.open()
    return capture


def _discard_queue(sock):
    while True:
        try:
            sock.recv(SNAPLEN)
        except BlockingIOError:
            return


# -- secret masking -------------------------------------------------------------

SECRET_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")
# A header line at the start of the TCP payload or after a line feed. Group 1
# is the value without the whitespace around the colon.
_SECRET_HEADER_LINE = re.compile(
    rb"^(?:(?:proxy-)?authorization|(?:set-)?cookie)[ \t]*:[ \t]*([^\r\n]*)",
    re.IGNORECASE | re.MULTILINE,
)
SECRET_MASK_BYTE = b"*"


def mask_secret_headers(linktype, data):
    """Return ``data`` with the values of SECRET_HEADERS lines in its TCP payload replaced by ``*``.

    The frame keeps its length, so every byte count stays the same, but the
    TCP checksum no longer matches. Frames whose bytes contain neither
    "cookie" nor "authorization" in any case are returned unchanged after one
    lower-casing and two substring searches. NOTE: each frame is masked on
    its own, so a header line split across two segments is masked only in the
    part that follows the name in the same segment.
    """
    lowered = data.lower()
    if b"cookie" not in lowered and b"authorization" not in lowered:
        return data
    decoded = decode(linktype, data)
    if isinstance(decoded, str):
        return data
    payload = decoded[7]
    if not payload:
        return data
    masked = None
    for match in _SECRET_HEADER_LINE.finditer(payload):
        start, end = match.span(1)
        if start == end:
            continue
        if masked is None:
            masked = bytearray(data)
            # decode() returns the payload as a slice of the frame, and only
            # an Ethernet trailer can follow it, so its last occurrence is it.
            offset = bytes(data).rfind(payload)
        masked[offset + start:offset + end] = SECRET_MASK_BYTE * (end - start)
    return data if masked is None else masked


class PcapWriter:
    """Write packets to a pcap file and rotate it at a size limit.

    The newest file is ``path``; older ones are ``path.1`` (the most recent)
    up to ``path.<max_files - 1>``, and the oldest beyond that is deleted.
    Timestamps are stored in microseconds, like the live pipeline's. With
    ``mask_secrets`` the values of SECRET_HEADERS are masked before a frame
    is written (see ``mask_secret_headers``).
    """

    _RECORD = struct.Struct("<IIII")

    def __init__(self, path, linktype, max_bytes, max_files, snaplen=SNAPLEN, mask_secrets=True):
        self.path = path
        self.linktype = linktype
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.snaplen = snaplen
        self.mask_secrets = mask_secrets
        self.file = None
        self.size = 0
        self.bytes_written = 0
        self.rotations = 0

    def open(self):
        """Create ``path`` (replacing an old one); raise OSError."""
        self.file = open(self.path, "wb", buffering=1 << 20)
        header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, self.snaplen, self.linktype)
        self.file.write(header)
        self.size = len(header)
        self.bytes_written += len(header)

    def write(self, ts, data, wirelen):
        if self.mask_secrets:
            data = mask_secret_headers(self.linktype, data)
        record_size = self._RECORD.size + len(data)
        if self.size + record_size > self.max_bytes and self.size > 24:
            self.rotate()
        seconds = int(ts)
        microseconds = round((ts - seconds) * 1e6)
        self.file.write(self._RECORD.pack(seconds, microseconds, len(data), wirelen))
        self.file.write(data)
        self.size += record_size
        self.bytes_written += record_size

    def rotate(self):
        self.file.close()
        oldest = f"{self.path}.{self.max_files - 1}" if self.max_files > 1 else self.path
        if os.path.exists(oldest):
            os.unlink(oldest)
        for number in range(self.max_files - 2, 0, -1):
            older = f"{self.path}.{number}"
            if os.path.exists(older):
                os.rename(older, f"{self.path}.{number + 1}")
        if self.max_files > 1:
            os.rename(self.path, f"{self.path}.1")
        self.rotations += 1
        self.open()

    def flush(self):
        if self.file is not None:
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
