"""The agent notices its own address changes from the kernel (issue 13), settled into one call a burst.

The live test runs in a network namespace of its own (`unshare -n`, loopback only): it
needs root, as CI has, and fails with a message otherwise.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from natrelay.adapters.mesh.address_watch import RTM_DELADDR, RTM_NEWADDR, address_messages

RTM_NEWROUTE = 24


def _message(kind: int, body: bytes = b"\0" * 8) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + body


def test_only_address_and_link_messages_count() -> None:
    """Kills a watch that fires on route churn (a wake-up for nothing) or misses a deletion."""
    data = _message(RTM_NEWADDR) + _message(RTM_NEWROUTE) + _message(RTM_DELADDR, b"\0" * 5)
    assert address_messages(data) == 2
    assert address_messages(_message(RTM_NEWROUTE)) == 0
    assert address_messages(b"\x05\0\0\0") == 0  # truncated: nothing, no exception


SCRIPT = textwrap.dedent(
    """
    import asyncio, subprocess
    from natrelay.adapters.mesh.address_watch import AddressWatch

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    async def main():
        calls = []
        watch = AddressWatch(lambda: calls.append(1), settle=0.2)
        watch.start()
        await asyncio.sleep(0.3)
        quiet = len(calls)
        ip("route", "add", "10.7.0.0/24", "dev", "lo")  # a route is no address change
        await asyncio.sleep(0.4)
        after_route = len(calls)
        ip("link", "add", "nrdummy0", "type", "veth", "peer", "name", "nrdummy1")
        ip("addr", "add", "10.9.0.1/24", "dev", "nrdummy0")
        ip("addr", "add", "10.9.0.2/24", "dev", "nrdummy0")
        ip("link", "set", "nrdummy0", "up")
        await asyncio.sleep(0.6)
        burst = len(calls)
        ip("addr", "del", "10.9.0.2/24", "dev", "nrdummy0")
        await asyncio.sleep(0.6)
        watch.close()
        print(quiet, after_route, burst, len(calls))

    asyncio.run(main())
    """
)


def test_a_burst_of_kernel_address_messages_is_one_change_and_a_later_one_another() -> None:
    """Kills a watch that polls or misses the kernel's messages, one that calls once per
    message (a re-read and a STUN query each), and one that swallows a later change."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the address-watch test needs root, unshare and ip (a network namespace)", pytrace=False)
    out = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            "-c",
            "import subprocess; subprocess.run(['ip','link','set','lo','up']);"
            + "exec("
            + repr(SCRIPT)
            + ")",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    quiet, after_route, burst, total = (int(x) for x in out.stdout.split())
    assert (quiet, after_route) == (0, 0)
    assert burst == 1, "a burst of link and address messages settles into one call"
    assert total == 2, "a later deletion is a change of its own"
