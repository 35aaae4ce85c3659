"""Packet sources: pcap and pcapng files (optionally gzip-compressed).

A source yields ``(ts, linktype, data, wirelen)`` per packet, where ``ts`` is
epoch seconds from the capture, ``data`` the captured bytes and ``wirelen`` the
packet's length on the wire (larger than ``len(data)`` when the snaplen cut it).
The readers parse records out of large blocks read from the file, because a
read call per record costs more than the rest of the per-packet work.

Damage in a file raises ``CaptureError`` naming the file, the packet number
and the byte offset; the packets yielded before it stay valid.
"""

import io
import struct
import zlib

from .decode import is_supported_linktype, linktype_name, supported_linktype_names

# Read size for files; a record never straddles more than two blocks unless it
# is larger than this, which the refill logic handles too.
BLOCK_SIZE = 1 << 22

# Largest caplen accepted before a record is called corrupt. libpcap's own
# limit for most link types is 262,144; 16 MiB leaves room for TSO frames and
# odd writers while still catching garbage lengths.
MAX_RECORD_BYTES = 1 << 24

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
# Alexey Kuznetzov's patched libpcap format: 8 more bytes per record header.
PCAP_MODIFIED_MAGIC = {
    b"\x34\xcd\xb2\xa1": "<",
    b"\xa1\xb2\xcd\x34": ">",
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

PCAPNG_IDB = 1
PCAPNG_OPB = 2
PCAPNG_SPB = 3
PCAPNG_EPB = 6
PCAPNG_SHB_TYPE = 0x0A0D0D0A


class CaptureError(Exception):
    """A capture file that cannot be read further, with where it broke."""

    def __init__(self, path, reason, packet=None, offset=None):
        self.path = path
        self.reason = reason
        self.packet = packet
        self.offset = offset
        super().__init__(self.describe())

    def describe(self):
        where = []
        if self.packet is not None:
            where.append(f"packet {self.packet}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.path}{place}: {self.reason}"


class GzipReader:
    """Decompress a gzip file incrementally, keeping everything before a cut.

    gzip.GzipFile discards the bytes of a read() call that hits the end of a
    cut-short file; this reader returns them and sets ``truncated`` instead.
    Concatenated gzip members are read one after another.
    """

    RAW_BLOCK = 1 << 20

    def __init__(self, raw):
        self.raw = raw
        self.decompressor = zlib.decompressobj(wbits=31)
        self.in_member = False
        self.pending = b""
        self.done = False
        self.truncated = False

    def read(self, size):
        parts = []
        count = 0
        while count < size and not self.done:
            chunk = self.pending or self.raw.read(self.RAW_BLOCK)
            self.pending = b""
            if not chunk:
                self.truncated = self.in_member
                self.done = True
                break
            self.in_member = True
            # max_length keeps the result within ``size``; the input not yet
            # decompressed waits in unconsumed_tail for the next call.
            data = self.decompressor.decompress(chunk, size - count)
            self.pending = self.decompressor.unconsumed_tail
            if self.decompressor.eof:
                self.pending = self.decompressor.unused_data
                self.decompressor = zlib.decompressobj(wbits=31)
                self.in_member = False
            parts.append(data)
            count += len(data)
        return b"".join(parts)


class CaptureFile:
    """Iterate the packets of one pcap or pcapng file, gzip-compressed or not.

    ``packets`` counts the records yielded so far, and ``position()`` returns the
    reader's offset in the file (compressed bytes) for progress display.
    """

    def __init__(self, path):
        self.path = str(path)
        self.packets = 0
        # {linktype: number of the first packet} for link types netmon cannot decode
        self.unsupported_linktypes = {}
        self.format = None
        self._raw = None
        self._file = None

    def open(self):
        try:
            self._raw = open(self.path, "rb")
        except OSError as error:
            raise CaptureError(self.path, f"cannot open: {error.strerror}") from None
        magic = self._raw.read(4)
        self._raw.seek(0)
        self._file = self._raw
        if magic[:2] == GZIP_MAGIC:
            self._file = GzipReader(self._raw)
        return self

    def close(self):
        if self._raw is not None:
            self._raw.close()

    def size(self):
        try:
            return _file_size(self._raw)
        except OSError:
            return 0

    def position(self):
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def __iter__(self):
        try:
            head = self._file.read(24)
        except (OSError, zlib.error) as error:
            raise CaptureError(self.path, f"cannot read: {error}") from None
        if len(head) < 4:
            raise CaptureError(self.path, "file is empty or shorter than a capture file header", offset=0)
        magic = head[:4]
        if magic in PCAP_MAGIC or magic in PCAP_MODIFIED_MAGIC:
            return self._pcap(head)
        if magic == PCAPNG_SHB:
            return self._pcapng(head)
        raise CaptureError(
            self.path,
            f"not a pcap or pcapng file (magic bytes {magic.hex()})",
            offset=0,
        )

    def _end_of_file(self):
        """Raise when a clean end of records is really a cut-short gzip stream."""
        if isinstance(self._file, GzipReader) and self._file.truncated:
            raise CaptureError(
                self.path,
                "the gzip stream ends without its end-of-stream marker: the file was cut short",
                self.packets + 1,
            )

    @property
    def gzip_truncated(self):
        return isinstance(self._file, GzipReader) and self._file.truncated

    def _read(self, size):
        try:
            return self._file.read(size)
        except (OSError, zlib.error) as error:
            raise CaptureError(
                self.path, f"read failed: {error}", self.packets + 1
            ) from None

    def _refill(self, buf, pos, offset, size, packets, cut):
        """Return (unread tail of buf plus the next read, its file offset).

        At the end of the file, raise CaptureError with ``cut`` when a record
        was cut short there, or return (None, offset) for a clean end.
        """
        more = self._read(size)
        if not more:
            self.packets = packets
            if cut is not None:
                raise CaptureError(self.path, cut, packets + 1, offset + pos)
            self._end_of_file()
            return None, offset
        return buf[pos:] + more, offset + pos

    def _pcap(self, head):
        self.format = "pcap"
        magic = head[:4]
        if len(head) < 24:
            raise CaptureError(self.path, f"file ends inside the pcap file header ({len(head)} of 24 bytes)", offset=0)
        extra = 0
        if magic in PCAP_MODIFIED_MAGIC:
            endian, scale = PCAP_MODIFIED_MAGIC[magic], 1e-6
            extra = 8
        else:
            endian, scale = PCAP_MAGIC[magic]
        _, _, _, _, snaplen, linktype = struct.unpack(endian + "HHiIII", head[4:24])
        # The upper bits of the link-type field carry FCS information.
        linktype &= 0x0FFFFFFF
        if not is_supported_linktype(linktype):
            raise CaptureError(
                self.path,
                f"{linktype_name(linktype)} is not supported (netmon decodes {supported_linktype_names()})",
                1,
                24,
            )
        return self._pcap_records(endian, scale, linktype, extra)

    def _pcap_records(self, endian, scale, linktype, extra):
        unpack_record = struct.Struct(endian + "IIII").unpack_from
        header_size = 16 + extra
        offset = 24  # file offset of buf[0]
        buf = self._read(BLOCK_SIZE)
        pos = 0
        packets = 0
        path = self.path
        while True:
            avail = len(buf) - pos
            if avail < header_size:
                cut = f"file ends inside a record header ({avail} of {header_size} bytes)" if avail else None
                buf, offset = self._refill(buf, pos, offset, BLOCK_SIZE, packets, cut)
                if buf is None:
                    return
                pos = 0
                continue
            sec, frac, caplen, wirelen = unpack_record(buf, pos)
            if caplen > MAX_RECORD_BYTES:
                self.packets = packets
                raise CaptureError(
                    path,
                    f"corrupt record header: captured length {caplen} is larger than {MAX_RECORD_BYTES}",
                    packets + 1,
                    offset + pos,
                )
            end = pos + header_size + caplen
            if end > len(buf):
                cut = f"file ends inside packet data ({len(buf) - pos - header_size} of {caplen} bytes)"
                buf, offset = self._refill(buf, pos, offset, max(BLOCK_SIZE, end - len(buf)), packets, cut)
                pos = 0
                continue
            data = buf[pos + header_size:end]
            pos = end
            packets += 1
            self.packets = packets
            yield sec + frac * scale, linktype, data, wirelen

    def _pcapng(self, head):
        self.format = "pcapng"
        return self._pcapng_blocks(head)

    def _pcapng_blocks(self, head):
        buf = head + self._read(BLOCK_SIZE)
        pos = 0
        offset = 0
        path = self.path
        endian = "<"
        interfaces = []  # (linktype, ts_scale, ts_offset, snaplen)
        last_ts = 0.0
        packets = 0
        supported = set()
        while True:
            avail = len(buf) - pos
            if avail < 12:
                cut = "file ends inside a pcapng block header" if avail else None
                buf, offset = self._refill(buf, pos, offset, BLOCK_SIZE, packets, cut)
                if buf is None:
                    return
                pos = 0
                continue
            if buf[pos:pos + 4] == PCAPNG_SHB:
                order = buf[pos + 8:pos + 12]
                if order == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif order == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise CaptureError(
                        path, "corrupt pcapng section header (bad byte-order magic)", packets + 1, offset + pos
                    )
                interfaces = []
            block_type, block_len = struct.unpack_from(endian + "II", buf, pos)
            if block_len < 12 or block_len % 4 or block_len > MAX_RECORD_BYTES:
                self.packets = packets
                raise CaptureError(
                    path, f"corrupt pcapng block: length {block_len}", packets + 1, offset + pos
                )
            end = pos + block_len
            if end > len(buf):
                cut = f"file ends inside a pcapng block ({len(buf) - pos} of {block_len} bytes)"
                buf, offset = self._refill(buf, pos, offset, max(BLOCK_SIZE, end - len(buf)), packets, cut)
                pos = 0
                continue
            body = pos + 8
            block_end = end - 4
            pos = end
            if block_type == PCAPNG_EPB or block_type == PCAPNG_OPB:
                if block_type == PCAPNG_EPB:
                    if block_end - body < 20:
                        raise CaptureError(path, "corrupt enhanced packet block", packets + 1, offset + body - 8)
                    ifid, ts_high, ts_low, caplen, wirelen = struct.unpack_from(endian + "IIIII", buf, body)
                else:
                    if block_end - body < 20:
                        raise CaptureError(path, "corrupt packet block", packets + 1, offset + body - 8)
                    ifid, _, ts_high, ts_low, caplen, wirelen = struct.unpack_from(endian + "HHIIII", buf, body)
                if ifid >= len(interfaces):
                    raise CaptureError(
                        path,
                        f"packet refers to interface {ifid}, but only {len(interfaces)} are described",
                        packets + 1,
                        offset + body - 8,
                    )
                if body + 20 + caplen > block_end:
                    raise CaptureError(
                        path,
                        f"corrupt packet block: captured length {caplen} exceeds the block",
                        packets + 1,
                        offset + body - 8,
                    )
                linktype, ts_scale, ts_offset, _ = interfaces[ifid]
                if linktype not in supported and linktype not in self.unsupported_linktypes:
                    self.unsupported_linktypes[linktype] = packets + 1
                last_ts = ((ts_high << 32) | ts_low) * ts_scale + ts_offset
                packets += 1
                self.packets = packets
                yield last_ts, linktype, buf[body + 20:body + 20 + caplen], wirelen
            elif block_type == PCAPNG_SPB:
                if not interfaces:
                    raise CaptureError(path, "simple packet block before any interface", packets + 1, offset + body - 8)
                (wirelen,) = struct.unpack_from(endian + "I", buf, body)
                linktype, _, _, snaplen = interfaces[0]
                if linktype not in supported and linktype not in self.unsupported_linktypes:
                    self.unsupported_linktypes[linktype] = packets + 1
                caplen = min(wirelen, block_end - body - 4, snaplen or wirelen)
                packets += 1
                self.packets = packets
                yield last_ts, linktype, buf[body + 4:body + 4 + caplen], wirelen
            elif block_type == PCAPNG_IDB:
                interface = _parse_idb(buf, body, block_end, endian)
                interfaces.append(interface)
                if is_supported_linktype(interface[0]):
                    supported.add(interface[0])
            # Other blocks (name resolution, statistics, custom, decryption
            # secrets) carry nothing netmon needs.


def _parse_idb(buf, start, end, endian):
    """Return (linktype, seconds per tick, offset seconds, snaplen) of an IDB."""
    linktype, _, snaplen = struct.unpack_from(endian + "HHI", buf, start)
    ts_scale = 1e-6
    ts_offset = 0
    pos = start + 8
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        value = buf[pos + 4:pos + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:
            # if_tsresol: high bit set means a power of two, else of ten.
            resolution = value[0]
            if resolution & 0x80:
                ts_scale = 2.0 ** -(resolution & 0x7F)
            else:
                ts_scale = 10.0 ** -resolution
        elif code == 14 and length == 8:
            (ts_offset,) = struct.unpack(endian + "q", value)
        pos += 4 + ((length + 3) & ~3)
    return linktype, ts_scale, ts_offset, snaplen


def _file_size(raw):
    current = raw.tell()
    size = raw.seek(0, io.SEEK_END)
    raw.seek(current)
    return size
