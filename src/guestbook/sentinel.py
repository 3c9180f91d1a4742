"""Asking Redis Sentinel who leads: the leader and the followers it names for one service.

The sentinels are the only authority on the topology; this module asks them (redis-py's
asyncio `Sentinel`, made once per process) and says what they answered, nothing more. Which
follower may serve reads is the store's decision (`store.py`), taken from each server's own
replication state, since a sentinel refreshes its view of the followers only every few seconds.

Every call is bounded by the store timeout per sentinel, so a hung sentinel costs one timeout,
and a sentinel that does not answer is skipped for the next one. Passwords never leave here
except on the wire: the addresses this module returns are bare `host:port`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

Address = tuple[str, int]


def address_text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Topology:
    """What one sentinel answered: the leader and the followers it considers up."""

    leader: Address
    followers: tuple[Address, ...]
    # Which sentinel answered, for the status.
    sentinel: Address


@dataclass(frozen=True)
class SentinelState:
    address: str
    reachable: bool
    # The leader this sentinel names, when it answers.
    leader: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "reachable": self.reachable, "leader": self.leader}


class SentinelUnavailable(Exception):
    """No sentinel named a leader for the service (none answered, or none knows one that is up)."""


class Sentinels:
    """The sentinels of one service, asked on demand."""

    def __init__(
        self,
        addresses: tuple[Address, ...],
        service: str,
        *,
        timeout: float,
        password: str | None = None,
    ) -> None:
        self.addresses = addresses
        self.service = service
        self.timeout = timeout
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(addresses),
            sentinel_kwargs={
                "password": password,
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "decode_responses": True,
                "client_name": "guestbook",
            },
        )

    async def close(self) -> None:
        await self._sentinel.aclose()

    async def ask(self) -> Topology:
        """The leader and followers for the service, from the first sentinel that knows them
        (redis-py moves a sentinel that answered to the front, so a dead one costs a timeout
        once, not on every question)."""
        why: list[str] = []
        for client in list(self._sentinel.sentinels):
            where = address_text(_address_of(client))
            try:
                async with asyncio.timeout(self.timeout * 2):
                    masters = cast(dict[str, dict[str, Any]], await client.sentinel_masters())
                    state = masters.get(self.service)
                    if not state or not self._sentinel.check_master_state(state, self.service):
                        why.append(f"{where} knows no leader that is up")
                        continue
                    replicas = await client.sentinel_slaves(self.service)
            except (RedisError, OSError, TimeoutError) as exc:
                # The class only: a server's message could quote what it was sent.
                why.append(f"{where} {type(exc).__name__}")
                continue
            leader = (str(state["ip"]), int(state["port"]))
            followers = tuple(
                (str(r["ip"]), int(r["port"]))
                for r in replicas
                if not (r.get("is_odown") or r.get("is_sdown") or r.get("is_disconnected"))
            )
            return Topology(leader, followers, _address_of(client))
        raise SentinelUnavailable(
            f"no sentinel of {len(self.addresses)} named a leader for {self.service!r}: "
            + ", ".join(why)
        )

    async def states(self) -> list[SentinelState]:
        """Each sentinel, whether it answers and whom it names leader (for the status)."""

        async def one(client: Redis) -> SentinelState:
            address = address_text(_address_of(client))
            try:
                async with asyncio.timeout(self.timeout):
                    found = cast(
                        "tuple[str, int] | None",
                        await client.sentinel_get_master_addr_by_name(self.service),
                    )
            except (RedisError, OSError, TimeoutError):
                return SentinelState(address, False)
            leader = address_text((str(found[0]), int(found[1]))) if found else None
            return SentinelState(address, True, leader)

        states = await asyncio.gather(*(one(c) for c in self._sentinel.sentinels))
        return sorted(states, key=lambda s: s.address)


def _address_of(client: Redis) -> Address:
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("host", "")), int(kwargs.get("port", 0))
