"""Per-process budgets that bound what concurrent requests may hold, and their release at request end.

Two budgets exist per process: bytes of embedding payloads being decoded or served, and gRPC
streams open to Triton. A request takes what it needs before the work starts; when the budget is
short it waits up to `wait_s` and then gets a 429. What a request holds is given back when its
HTTP exchange ends, whatever way it ends (done, failed, client gone, a stream never iterated):
`LeaseMiddleware` releases it after the app has returned.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from client.frontend.errors import APIError

logger = logging.getLogger(__name__)
LEASES_KEY = "frontend.leases"


class Lease:
    """An amount taken from a Budget; release() is idempotent."""

    def __init__(self, budget: "Budget", amount: int) -> None:
        self._budget = budget
        self.amount = amount

    def release(self) -> None:
        """Give the amount back (once)."""
        if self.amount:
            self._budget._give_back(self.amount)
            self.amount = 0


class Budget:
    """A counted resource shared by the requests of one process."""

    def __init__(self, name: str, capacity: int, wait_s: float, parameter: str | None = None) -> None:
        self.name = name
        self.capacity = capacity
        self.wait_s = wait_s
        self.parameter = parameter
        self.used = 0
        self._changed = asyncio.Condition()

    async def take(self, amount: int, scope: Scope | None = None) -> Lease:
        """Take `amount`, waiting up to wait_s; 429 if it does not free up, 413 if it never could.

        With `scope`, the lease is also released when the HTTP exchange ends (LeaseMiddleware).
        """
        if amount > self.capacity:
            raise APIError(413, f"this request needs {amount} {self.name}, over the server's limit of "
                                f"{self.capacity}", self.parameter)
        if self.used + amount > self.capacity:
            try:
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.used + amount <= self.capacity),
                                           self.wait_s)
            except (asyncio.TimeoutError, TimeoutError):
                logger.info("busy: %d %s in use of %d", self.used, self.name, self.capacity)
                raise APIError(429, f"the server is busy ({self.name} in use); retry later") from None
        self.used += amount
        lease = Lease(self, amount)
        if scope is not None:
            scope.setdefault(LEASES_KEY, []).append(lease)
        return lease

    def _give_back(self, amount: int) -> None:
        self.used -= amount
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class LeaseMiddleware:
    """Releases every lease a request took once its HTTP exchange is over (streams included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            for lease in scope.get(LEASES_KEY, ()):
                lease.release()
