#!/usr/bin/env python3
"""Holds N watches open through one hub of a running `kubehub-perf peer-hop`, then sends a few
GETs through the same hub: how many concurrent requests one peer link carries (each request
forwarded between two hubs holds one stream of their link for its lifetime).

usage: perf/peer-watches.py RUN_DIR HUB N
  RUN_DIR  the scenario's run/stack folder (it holds by-hand.txt: token, hub URLs, cluster; ca.crt)
  HUB      hub-a (holds the tunnel) or hub-c (forwards to hub-a over a peer link)
  N        watches to open (each is a TLS connection: raise `ulimit -n` above N first)

e.g. kubehub-perf peer-hop --targets a-rv0 --rounds 1 --duration 240 --rate 10 --wait-quiet 0 \
         --out /tmp/watch-limit &
     ulimit -n 20000; perf/peer-watches.py /tmp/watch-limit/run/stack hub-c 1100
"""
import asyncio
import ssl
import sys
import time

WATCH = "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0"
GETS = [
    "/api/v1/namespaces/default/configmaps/kube-root-ca.crt?resourceVersion=0",
    "/api/v1/namespaces/default/serviceaccounts/default",
    "/version",
]


def main():
    run, hub, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(f"{run}/by-hand.txt") as f:
        kv = dict(line.split(" ", 1) for line in f.read().splitlines())
    host, port = kv[hub].removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=f"{run}/{kv['ca']}")

    async def request(path):
        """Sends a GET; returns (status, response head, reader, writer)."""
        r, w = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host)
        w.write(
            f"GET /clusters/{kv['cluster']}{path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {kv['token']}\r\n\r\n".encode()
        )
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        return head.split()[1].decode(), head, r, w

    async def run_all():
        held, statuses, refused = [], {}, None
        t = time.time()
        for i in range(0, n, 50):
            batch = [request(WATCH) for _ in range(min(50, n - i))]
            for x in await asyncio.gather(*batch, return_exceptions=True):
                s = x[0] if isinstance(x, tuple) else type(x).__name__
                statuses[s] = statuses.get(s, 0) + 1
                if isinstance(x, tuple):
                    held.append(x)
                    if s != "200" and refused is None:
                        refused = x
        print(f"{n} watches through {hub}: {statuses} in {time.time() - t:.1f} s")
        if refused is not None:
            _, head, r, _ = refused
            body = await asyncio.wait_for(r.read(2000), 5)
            print("  the first refused:", head.decode(errors="replace").split("\r\n")[0], body.decode(errors="replace"))
        for path in GETS:
            t = time.time()
            s, _, _, w = await request(path)
            w.close()
            print(f"  then GET {path}: {s} in {1000 * (time.time() - t):.0f} ms")
        for _, _, _, w in held:
            w.close()

    asyncio.run(run_all())


if __name__ == "__main__":
    main()
