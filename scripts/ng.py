#!/usr/bin/env python3
"""Tiny client for the rtpengine NG control protocol (UDP, "COOKIE <bencoded dict>").

Used by scripts/loadtest to create relay sessions without a SIP proxy:

  ng.py [--ng 127.0.0.1:2223] ping
  ng.py [--ng ...] command '{"command": "query", "call-id": "x"}'    # any NG command as JSON
  ng.py [--ng ...] setup --calls N --caller-ip IP --caller-port-base P \\
        --callee IP:PORT --offer-dir IN OUT --out FILE
      For call i: offer (caller SDP c=IP m=audio P+i, direction [IN, OUT]) and answer (callee SDP
      at IP:PORT); writes the address the caller must send to (from the answer's rewritten SDP),
      one "IP:PORT" line per call, to FILE.

Standard library only.
"""
import argparse
import json
import os
import re
import socket
import sys


def bencode(v):
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, (bytes, bytearray)):
        return b"%d:%s" % (len(v), bytes(v))
    if isinstance(v, (list, tuple)):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError("cannot bencode %r" % type(v))


def bdecode(data, i=0):
    """Returns (value, next index); byte strings are decoded as UTF-8 when possible."""
    c = data[i:i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1:j]), j + 1
    if c == b"l":
        i, out = i + 1, []
        while data[i:i + 1] != b"e":
            v, i = bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i, out = i + 1, {}
        while data[i:i + 1] != b"e":
            k, i = bdecode(data, i)
            v, i = bdecode(data, i)
            out[k] = v
        return out, i + 1
    if c.isdigit():
        j = data.index(b":", i)
        n = int(data[i:j])
        raw = data[j + 1:j + 1 + n]
        try:
            return raw.decode(), j + 1 + n
        except UnicodeDecodeError:
            return raw, j + 1 + n
    raise ValueError("bad bencode at %d" % i)


class Ng:
    def __init__(self, addr, timeout=2.0, retries=3):
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.retries = retries
        self.n = 0

    def __call__(self, msg):
        self.n += 1
        cookie = ("%d_%d" % (os.getpid(), self.n)).encode()
        pkt = cookie + b" " + bencode(msg)
        for _ in range(self.retries):
            self.sock.sendto(pkt, self.addr)
            try:
                while True:
                    data, _ = self.sock.recvfrom(65535)
                    c, _, body = data.partition(b" ")
                    if c == cookie:
                        reply, _ = bdecode(body)
                        return reply
            except socket.timeout:
                continue
        raise TimeoutError("no NG reply from %s:%d to %s" % (self.addr + (msg.get("command"),)))


def sdp(ip, port, sess):
    return ("v=0\r\no=- %d 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
            "m=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n" % (sess, ip, ip, port))


def media_addr(text):
    c = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+)", text, re.M)
    if not (c and m):
        raise ValueError("no c=/m= in SDP: %r" % text)
    return "%s:%s" % (c.group(1), m.group(1))


def check(reply, what):
    if reply.get("result") != "ok":
        raise RuntimeError("%s failed: %s" % (what, json.dumps(reply, default=repr)))
    return reply


def setup(ng, a):
    callee_ip, callee_port = a.callee.rsplit(":", 1)
    out = []
    for i in range(a.calls):
        cid = "%s-%d" % (a.prefix, i)
        r = check(ng({"command": "offer", "call-id": cid, "from-tag": "a%d" % i,
                      "sdp": sdp(a.caller_ip, a.caller_port_base + i, 1000 + i),
                      "direction": a.offer_dir, "replace": ["origin", "session-connection"]}),
                  "offer " + cid)
        r = check(ng({"command": "answer", "call-id": cid, "from-tag": "a%d" % i, "to-tag": "b%d" % i,
                      "sdp": sdp(callee_ip, int(callee_port), 2000 + i),
                      "direction": list(reversed(a.offer_dir)),
                      "replace": ["origin", "session-connection"]}),
                  "answer " + cid)
        out.append(media_addr(r["sdp"]))
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print("set up %d sessions; caller sends to e.g. %s" % (len(out), out[0] if out else "-"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ng", default="127.0.0.1:2223")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping")
    c = sub.add_parser("command")
    c.add_argument("json")
    s = sub.add_parser("setup")
    s.add_argument("--calls", type=int, required=True)
    s.add_argument("--caller-ip", required=True)
    s.add_argument("--caller-port-base", type=int, default=20000)
    s.add_argument("--callee", required=True)
    s.add_argument("--offer-dir", nargs=2, default=["gw", "it"])
    s.add_argument("--prefix", default="lt")
    s.add_argument("--out", required=True)
    a = p.parse_args()
    ng = Ng(a.ng)
    if a.cmd == "ping":
        r = ng({"command": "ping"})
        print(json.dumps(r))
        sys.exit(0 if r.get("result") == "pong" else 1)
    if a.cmd == "command":
        print(json.dumps(ng(json.loads(a.json)), default=repr))
        return
    setup(ng, a)


if __name__ == "__main__":
    main()
