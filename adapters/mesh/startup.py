"""The agent's start-up: open the log, configure WireGuard, announce, publish, resume.

This module owns what ``Agent.start`` does before the loop (``adapters.mesh.observe``)
runs: rebuilding the engine from the log, adding every configured peer to WireGuard in
one transaction, writing this start into the node's own stream (``PolicySet``), waiting
briefly for new peers' candidates, and putting the data plane back where the log says
the engine is; and this node's candidates, published at start and again when the kernel
announces a local address change (``address_watch``). It is a mixin of ``Agent`` (``adapters/mesh/agent.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from natrelay.adapters.mesh import data_plane as dp
from natrelay.adapters.mesh.address_watch import AddressWatch
from natrelay.adapters.mesh.candidates import classify_nat, stun_public_ip
from natrelay.adapters.mesh.rendezvous import Rendezvous
from natrelay.adapters.mesh.wireguard import PeerConfig, WireGuard
from natrelay.core import lifecycle as lc
from natrelay.core.engine import Engine
from natrelay.core.events import (
    Event,
    InputRejected,
    LocalAddressesChanged,
    NatObserved,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelaySessionClosed,
    RelaySessionFailed,
)
from natrelay.eventlog import EventLog

log = logging.getLogger("natrelay.adapters.mesh.agent")

if TYPE_CHECKING:
    from natrelay.adapters.mesh.agent import Agent


class Starting:
    """``Agent.start`` and what it needs (see the module docstring)."""

    def start(self: Agent) -> None:
        """Open the log, rebuild the engine, configure WireGuard, announce, publish."""
        cfg = self.config
        self.log = EventLog.open(self.log_url)
        self.rendezvous = Rendezvous(self.log_url)
        self._rebuild()
        self.wireguard = self.wireguard or WireGuard(self.interface)
        status = self.wireguard.show()
        self.me, self.listen_port = status.public_key, status.listen_port
        for spec in cfg.relays:
            self._credentials[spec.server.relay_id] = spec.credentials.load()
        dp.open_data_plane(self, status)
        # One transaction for all peers (one UAPI write; one `wg set` a peer without UAPI).
        # In proxy mode each peer's endpoint is its loopback port of the path proxy.
        self.wireguard.add_peers(
            [
                PeerConfig(
                    p.public_key,
                    p.allowed_ips,
                    self.proxy.add_peer(p.public_key) if self.proxy else None,
                    cfg.persistent_keepalive,
                )
                for p in cfg.peers
            ]
        )
        if self._seen_seq == 0:
            self.engine = Engine(cfg.policy)
        # Every start is an event in this node's own stream, whatever the log holds already:
        # `nodes_in` (replay, status, timeline --node) knows a node by it. Deciding "fresh"
        # from the node's whole view missed a node started after another had announced
        # relays (its view was not empty, its own stream was), with the default policy.
        self.feed(PolicySet(at=self.now(), policy=cfg.policy))
        for spec in cfg.relays:
            self._announce_once(spec.server.relay_id, spec.server.region, spec.server.address)
        self._resume()
        self._observe_nat(self.feed)
        self._publish_candidates()
        self._address_watch = AddressWatch(self._local_addresses_changed)
        self._address_watch.start()
        live = {k for k, r in self.engine.peers.items() if r.state != lc.REMOVED}
        new = [p for p in cfg.peers if p.public_key not in live]
        published = self._await_candidates([p.public_key for p in new])
        for peer in new:
            candidates = tuple(dict.fromkeys(peer.endpoints + published.get(peer.public_key, ())))
            named = {
                **self._published_kinds.get(peer.public_key, {}),
                **dict.fromkeys(peer.endpoints, "configured"),
            }
            self.feed(
                PeerAdded(
                    at=self.now(),
                    peer=peer.public_key,
                    name=peer.name,
                    candidates=candidates,
                    kinds=tuple(named.get(c, "") for c in candidates) if named else (),
                    access=peer.access,  # type: ignore[arg-type]
                    preferred_region=peer.preferred_region,
                    nat_type=self._published_nat.get(peer.public_key, "unknown"),
                )
            )
        configured = {p.public_key for p in cfg.peers}
        for key in sorted(live - configured):
            self.feed(PeerRemoved(at=self.now(), peer=key))

    def _await_candidates(self: Agent, peers: list[str]) -> dict[str, tuple[str, ...]]:
        """Candidates new peers published, waiting up to `startup_wait` s for those not yet."""
        found: dict[str, tuple[str, ...]] = {}
        rejected: set[int] = set()
        deadline = time.monotonic() + self.startup_wait
        while True:
            for record in self.rendezvous.poll(self.me, 0):
                if record.kind == "candidates" and record.sender in peers:
                    update = self._published_candidates(record, ())
                    if isinstance(update, InputRejected):
                        if record.seq not in rejected:
                            rejected.add(record.seq)
                            self._pending.append(update)  # recorded at the first step
                    else:
                        found[record.sender] = update.candidates
                        self._published_kinds[record.sender] = dict(
                            zip(update.candidates, update.kinds, strict=False)
                        )
                        if update.nat_type is not None:
                            self._published_nat[record.sender] = update.nat_type
            if len(found) == len(peers) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def _resume(self: Agent) -> None:
        """Put the data plane back where the log says the engine is."""
        for key, record in sorted(self.engine.peers.items()):
            if record.state == lc.RELAY_CONNECTED and record.path and record.session:
                self.feed(
                    RelaySessionClosed(
                        at=self.now(),
                        peer=key,
                        relay=record.path,
                        session=record.session,
                        reason="agent restarted",
                    )
                )
            elif record.relay_pending is not None:
                self.feed(
                    RelaySessionFailed(
                        at=self.now(), peer=key, relay=record.relay_pending, reason="agent restarted"
                    )
                )
            elif record.state == lc.DIRECT_CONNECTED and record.path:
                self._set_endpoint(key, record.path)
                self._path[key] = ("direct", record.path)

    def _publish_candidates(self: Agent) -> tuple[str, ...]:
        """Publish this node's candidates; returns them (what a local change is judged by)."""
        if self.proxy is not None or self.config.advertise_host or self.config.port_mapping:
            self._own_candidates = dp.publish_candidates(self)
            return self._own_candidates
        candidates = list(self.config.extra_candidates)
        if self.config.advertise_reflexive:
            for spec in self.config.relays:
                ip = stun_public_ip(spec.server.host, spec.server.port)
                if ip is not None:
                    candidates.append(f"{ip}:{self.listen_port}")
                    break
        unique = tuple(dict.fromkeys(candidates))
        if unique:
            self.rendezvous.publish_candidates(self.now(), self.me, unique, nat_type=self._nat_type)
        self._own_candidates = unique
        return unique

    def _local_addresses_changed(self: Agent) -> None:
        """The kernel announced an address or link change: republish, and tell the engine.

        Only a change of what this node publishes is an observation: the engine then
        re-probes every peer beside its live path (issue 13); peers learn the new
        candidates from the rendezvous and probe back.
        """
        before, nat_before = self._own_candidates, self._nat_type
        self._observe_nat(self._pending.append)
        after = self._publish_candidates()
        if after != before:
            log.info("local addresses changed: %s -> %s", ", ".join(before) or "-", ", ".join(after) or "-")
            self._pending.append(LocalAddressesChanged(at=self.now(), addresses=after))
        elif self._nat_type != nat_before:
            log.info("this node's NAT changed (%s -> %s), its addresses did not", nat_before, self._nat_type)

    def _observe_nat(self: Agent, report: Callable[[Event], None]) -> None:
        """Name this node's NAT from two relays' STUN answers; a new verdict is an observation.

        The engine needs both sides' NAT types to judge a hard pairing (issue 16); the
        peers' come from their own agents through the log's fleet facts.
        """
        servers = [(spec.server.host, spec.server.port) for spec in self.config.relays[:2]]
        self._stun_nat = classify_nat(servers)
        self._judge_nat(report)

    def _judge_nat(self: Agent, report: Callable[[Event], None]) -> None:
        """This node's NAT as WireGuard's port sees it: STUN's verdict, except that a port
        mapping (UPnP IGD, NAT-PMP, PCP) forwards the mapped port from anyone and sends from
        it to everyone, a full cone for WireGuard whatever the router does to other sockets
        (peers then punch plainly instead of spending a birthday attempt, issue 16)."""
        nat_type = self._stun_nat
        mapper = self._port_mapper
        if mapper is not None and mapper.external is not None and nat_type not in ("none", "unknown"):
            nat_type = "full_cone"
        if nat_type != "unknown" and nat_type != self._nat_type:
            log.info("this node's NAT: %s", nat_type)
            self._nat_type = nat_type
            report(NatObserved(at=self.now(), nat_type=nat_type))
