#!/usr/bin/python3
"""The host side of scripts/guest/tests/tcp-bench.sh: for each stream i, a sink on ADDR:5001+i that reads exactly
MB MiB and closes, and a source on ADDR:5101+i that sends MB MiB and closes; connection after connection, until
killed. Usage: tcp-peer.py ADDR STREAMS MB"""
import socket
import sys
import threading

addr, streams, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
total = mb << 20
chunk = b"\0" * (1 << 16)


def serve(port, handle):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(8)
    while True:
        c, _ = s.accept()
        c.settimeout(300)
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def sink(c):
    left = total
    try:
        while left > 0:
            b = c.recv(min(left, 1 << 20))
            if not b:
                break
            left -= len(b)
    finally:
        c.close()


def source(c):
    left = total
    try:
        while left > 0:
            n = c.send(chunk[: min(left, len(chunk))])
            left -= n
        c.shutdown(socket.SHUT_WR)
    finally:
        c.close()


for i in range(streams):
    threading.Thread(target=serve, args=(5001 + i, sink), daemon=True).start()
    threading.Thread(target=serve, args=(5101 + i, source), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
