"""This node's own addresses changing, as the kernel announces it: rtnetlink multicast, no polling.

This module owns noticing a local network change — a laptop that wakes on another
Wi-Fi, a DHCP lease renewed with a new address, an interface going down — without
polling: a netlink socket subscribed to the kernel's address and link groups sits in
the event loop and costs nothing until the kernel writes to it. A burst of messages
(an interface coming up announces its link and each address) is settled for
``settle`` seconds, then ``on_change`` runs once; what changed is the caller's
question (``candidates`` re-reads the addresses), so a message about the tunnel
interface itself, which the caller filters out, costs one re-read and no event.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

#: rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 and IPv6 addresses.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
#: Message types that may change this node's addresses.
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
ADDRESS_MESSAGES = frozenset({RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR})


def address_messages(data: bytes) -> int:
    """How many of the netlink messages in ``data`` may change an address (pure)."""
    count, offset = 0, 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        count += kind in ADDRESS_MESSAGES
        offset += (length + 3) & ~3
    return count


class AddressWatch:
    """Calls ``on_change`` once a burst of the kernel's address/link messages has settled."""

    def __init__(self, on_change: Callable[[], None], settle: float = 0.3) -> None:
        self.on_change = on_change
        self.settle = settle
        self.changes = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Subscribe (inside a running loop); without netlink the agent runs on, unwatched."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # driven step by step (tests, embedding): nobody would read it
            log.debug("no running event loop: local address changes are not watched")
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.setblocking(False)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError as exc:
            log.warning("cannot watch local address changes (rtnetlink: %s); they go unnoticed", exc)
            return
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None and self._loop is not None
        relevant = 0
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOBUFS: messages were lost; re-reading covers them
                log.info("rtnetlink: %s; re-reading the addresses", exc)
                relevant += 1
                break
            if not data:
                break
            relevant += address_messages(data)
        if relevant:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(self.settle, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.changes += 1
        try:
            self.on_change()
        except Exception:  # a failed re-read must not stop the agent; the next change retries
            log.exception("handling a local address change failed")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
