#!/usr/bin/env python3
"""Where the time of a pubsub publish goes on the wire (issue 17's cluster_bench gap).

Captures loopback TCP (AF_PACKET on `lo`, kernel receive timestamps; needs root) while a
benchmark runs, then matches each <publish> a client sent to the cluster's node 0 with the
notifications node 1 delivered for the same node and item, and prints per pubsub node, item-id
class and receiving user the p25/p50/p75 of publish -> notification *as seen on the wire*,
i.e. the servers' share of the round trip, without either client's own work.

    python3 xmpp_wire_times.py capture FILE &      # then run the bench; kill -INT when done
    python3 xmpp_wire_times.py report FILE PORT0 PORT1   # c2s ports of node 0 and node 1

(cluster_bench prints both ports on its first line.) No third-party packages.
"""
import re
import signal
import socket
import struct
import sys

SO_TIMESTAMPNS = 35


def capture(path):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("lo", 0))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    with open(path, "wb") as out:
        while not stop:
            try:
                data, anc, _flags, addr = s.recvmsg(65536, 1024)
            except InterruptedError:
                continue
            if addr[2] != 0:  # PACKET_HOST only: loopback shows each packet twice
                continue
            ts = next((sum(x / f for x, f in zip(struct.unpack("qq", d[:16]), (1, 1e9)))
                       for _lvl, typ, d in anc if typ == SO_TIMESTAMPNS), None)
            ip = data[14:]
            if ts is None or len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            sp, dp = struct.unpack("!HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                out.write(struct.pack("!dHHI", ts, sp, dp, len(payload)) + payload)


PUBLISH = re.compile(rb"<publish node=['\"]([^'\"]+)['\"]><item id=['\"]([^'\"]+)['\"]>")
EVENT = re.compile(rb"<items node=['\"]([^'\"]+)['\"]><item id=['\"]([^'\"]+)['\"]")
TO = re.compile(rb"<message to=['\"]([^'\"@]+)@")


def report(path, n0, n1):
    blob = open(path, "rb").read()
    i, sent, times = 0, {}, {}
    while i < len(blob):
        ts, sp, dp, ln = struct.unpack("!dHHI", blob[i:i + 16])
        payload = blob[i + 16:i + 16 + ln]
        i += 16 + ln
        if dp == n0:
            for m in PUBLISH.finditer(payload):
                sent[m.groups()] = ts
        if sp == n1:
            for part in payload.split(b"</message>"):
                m, to = EVENT.search(part), TO.search(part)
                if m and to and m.groups() in sent:
                    node, item = (g.decode() for g in m.groups())
                    kind = item.split("/")[-1].rstrip("0123456789")
                    key = (node, kind or "-", to.group(1).decode())
                    times.setdefault(key, []).append((ts - sent[m.groups()]) * 1e3)
    print("node, item class, subscriber: n, p25 / p50 / p75 ms (publish -> notification on the wire)")
    for key, v in sorted(times.items()):
        if len(v) < 20:
            continue
        v.sort()
        q = lambda p: v[int(p * (len(v) - 1))]
        print(f"{key}: {len(v)}, {q(.25):.3f} / {q(.5):.3f} / {q(.75):.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "capture":
        capture(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "report":
        report(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
