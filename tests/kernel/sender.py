"""Send a batch of probe flows from the current network namespace and report the outcome.

Run as ``ip netns exec NS python3 sender.py`` with a JSON request on stdin::

    {"timeout": 1.0,
     "flows": [{"family": 4, "proto": "tcp", "src": "203.0.113.10" | null,
                "sport": 0, "dst": "192.168.10.2", "dport": 30080}, ...]}

and prints a JSON list (same order) of ``{"src", "sport", "result"}`` where result is
``connected`` / ``reply`` (something answered), ``refused`` (ECONNREFUSED: RST or ICMP
port unreachable), ``unreachable:<ERRNO>`` (any other error) or ``timeout``.

Everything is standard library only: the script runs inside foreign namespaces with
whatever interpreter is on PATH, and it must stay independent of the code under test.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

# Without IP_RECVERR a connected datagram socket only reports "hard" ICMP errors (port
# unreachable, admin prohibited...); host/net unreachable would look like a timeout.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)

# ICMP echo request types; the kernel fills in identifier and checksum on ping sockets.
_ECHO_REQUEST = {4: 8, 6: 128}


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _result_for_error(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return "refused"
    return f"unreachable:{_errname(code)}"


def _open(flow: dict[str, Any]) -> tuple[socket.socket | None, str | None, str, int]:
    """Create, bind and connect one probe socket; returns (sock, early result, src, sport)."""
    fam = socket.AF_INET if flow["family"] == 4 else socket.AF_INET6
    proto = flow["proto"]
    src = flow.get("src") or ""
    sport = int(flow.get("sport") or 0)
    dst, dport = flow["dst"], int(flow.get("dport") or 0)
    if proto == "tcp":
        sock = socket.socket(fam, socket.SOCK_STREAM)
    elif proto == "udp":
        sock = socket.socket(fam, socket.SOCK_DGRAM)
    elif proto == "sctp":
        sock = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    elif proto == "icmp":
        ip_proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
        sock = socket.socket(fam, socket.SOCK_DGRAM, ip_proto)
        dport = 0
    else:
        raise ValueError(f"unknown protocol {proto!r}")
    sock.setblocking(False)
    if proto in ("udp", "icmp"):
        if fam == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    try:
        if src or sport:
            sock.bind((src, sport))
        if proto in ("tcp", "sctp"):
            rc = sock.connect_ex((dst, dport))
            if rc not in (0, errno.EINPROGRESS):
                name = sock.getsockname()
                sock.close()
                return None, _result_for_error(rc), name[0] or src, name[1]
        else:
            sock.connect((dst, dport))
            if proto == "udp":
                sock.send(b"kpa-probe")
            else:
                sock.send(struct.pack("!BBHHH", _ECHO_REQUEST[flow["family"]], 0, 0, 0, 1))
    except OSError as exc:
        name = sock.getsockname()
        sock.close()
        return None, _result_for_error(exc.errno or 0), name[0] or src, name[1]
    name = sock.getsockname()
    return sock, None, name[0], name[1]


def run(request: dict[str, Any]) -> list[dict[str, Any]]:
    flows: list[dict[str, Any]] = request["flows"]
    timeout = float(request.get("timeout", 1.0))
    results: list[dict[str, Any]] = [{} for _ in flows]
    pending: dict[int, tuple[int, socket.socket, str]] = {}
    poller = select.poll()
    for i, flow in enumerate(flows):
        sock, early, src, sport = _open(flow)
        results[i] = {"src": src, "sport": sport, "result": early or "timeout"}
        if sock is not None:
            pending[sock.fileno()] = (i, sock, flow["proto"])
            mask = select.POLLOUT if flow["proto"] in ("tcp", "sctp") else select.POLLIN
            poller.register(sock, mask | select.POLLERR)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _events in poller.poll(left * 1000):
            i, sock, proto = pending.pop(fd)
            poller.unregister(fd)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                results[i]["result"] = _result_for_error(code)
            elif proto in ("tcp", "sctp"):
                results[i]["result"] = "connected"
            else:
                try:
                    sock.recv(2048)
                    results[i]["result"] = "reply"
                except OSError as exc:
                    results[i]["result"] = _result_for_error(exc.errno or 0)
    # An error that came back before the deadline is an answer, though this process (on a busy
    # machine) did not get to poll for it in time: only a socket without one timed out.
    for i, sock, _proto in pending.values():
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            results[i]["result"] = _result_for_error(code)
    # Closing a SYN_SENT socket sends nothing, so this does not disturb conntrack state.
    for _i, sock, _proto in pending.values():
        sock.close()
    return results


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = json.load(sys.stdin)
    json.dump(run(request), sys.stdout)
    sys.stdout.flush()
    os._exit(0)  # skip socket teardown ordering; the kernel reaps everything


if __name__ == "__main__":
    main()
