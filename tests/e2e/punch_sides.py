"""One side of a birthday punch, run inside a namespace by test_birthday_punch.py; prints JSON.

python punch_sides.py hard <easy ip:port> <sockets> <rate> <duration>
python punch_sides.py easy <hard public ip> <local port> <probes> <rate> <duration> <seed>
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import sys
import time

from natrelay.adapters.mesh import probes as pr
from natrelay.adapters.mesh.birthday_punch import HardSide, spray, spray_ports

SECRET = b"birthday punch test secret, 32 bytes"
HARD = base64.b64encode(bytes([7]) * 32).decode()
EASY = base64.b64encode(bytes([8]) * 32).decode()
KEY = pr.pair_key(SECRET, HARD, EASY)


async def hard(target: str, sockets: int, rate: float, duration: float) -> dict[str, object]:
    host, port = target.rsplit(":", 1)
    side = HardSide(HARD, EASY, KEY, (host, int(port)), sockets=sockets, rate=rate, duration=duration)
    outcome, sock = await side.run()
    if sock is not None:
        # Keep answering over the found socket for a moment: the easy side confirms with it.
        sock.setblocking(False)
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            probe = pr.decode(data, KEY)
            if probe.kind == pr.PING:
                sock.sendto(pr.encode(pr.PONG, HARD, KEY, probe.txid, observed=addr), addr)
        sock.close()
    return {
        "met": outcome.met,
        "probes": outcome.probes_sent,
        "sockets": outcome.sockets_opened,
        "took": outcome.took_s,
    }


async def easy(
    ip: str, local_port: int, probes: int, rate: float, duration: float, seed: int
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", local_port))
    pending = pr.PendingPings()
    met: list[tuple[str, int]] = []
    started = time.monotonic()

    def send_ping(addr: tuple[str, int]) -> None:
        txid = pr.new_txid()
        pending.add(txid, HARD, addr, time.monotonic())
        with contextlib.suppress(OSError):
            sock.sendto(pr.encode(pr.PING, EASY, KEY, txid), addr)

    def readable() -> None:
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                return
            try:
                probe = pr.decode(data, KEY)
            except (pr.ProbeError, ValueError):
                continue
            if probe.kind == pr.PING:
                sock.sendto(pr.encode(pr.PONG, EASY, KEY, probe.txid, observed=addr), addr)
                send_ping(addr)  # confirm it the usual way: our ping, its pong
            elif probe.kind == pr.PONG and pending.answer(probe, addr, time.monotonic()) is not None:
                met.append(addr)

    loop.add_reader(sock.fileno(), readable)
    ports = spray_ports(probes, random.Random(seed))
    task = loop.create_task(spray(send_ping, ip, ports, rate, lambda: bool(met)))
    while not met and time.monotonic() - started < duration:
        await asyncio.sleep(0.01)
    took = time.monotonic() - started
    task.cancel()
    sent = len(ports) if not task.done() or task.cancelled() else task.result()
    loop.remove_reader(sock.fileno())
    sock.close()
    return {
        "met": bool(met),
        "remote": list(met[0]) if met else None,
        "took": took,
        "probes": min(sent, int(took * rate) + 1),
    }


def main() -> None:
    role, *args = sys.argv[1:]
    if role == "hard":
        result = asyncio.run(hard(args[0], int(args[1]), float(args[2]), float(args[3])))
    else:
        result = asyncio.run(
            easy(args[0], int(args[1]), int(args[2]), float(args[3]), float(args[4]), int(args[5]))
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
