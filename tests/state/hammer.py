"""One process of the cross-process no-overshoot test: many concurrent reservations on one budget.

    python -m tests.state.hammer URL NAMESPACE SUBJECT LIMIT AMOUNT COUNT START_AT

Waits until ``START_AT`` (epoch seconds) so the processes start together,
then reserves ``AMOUNT`` ``COUNT`` times at once, spread over a few store
objects (connections, each with its own SQLite thread) so that calls
interleave as much as they can; each granted hold is settled at its full
amount after a short pause. Prints ``{"granted": n}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

from router.state import BudgetScope, Reservation, open_store

CONNECTIONS = 5


async def hammer(url: str, namespace: str, subject: str, limit: float, amount: float, count: int) -> int:
    stores = [open_store(url, namespace=namespace) for _ in range(CONNECTIONS)]
    scope = BudgetScope(subject, "month", limit)

    async def one(index: int) -> int:
        store = stores[index % CONNECTIONS]
        hold = await store.budgets.reserve([scope], amount, request_id=f"{os.getpid()}-{index}", ttl_s=60)
        if not isinstance(hold, Reservation):
            return 0
        await asyncio.sleep(random.uniform(0, 0.01))
        await store.budgets.settle(hold, amount)
        return 1

    try:
        return sum(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        for store in stores:
            await store.close()


def main(argv: list[str]) -> None:
    url, namespace, subject, limit, amount, count, start_at = argv
    time.sleep(max(0.0, float(start_at) - time.time()))
    granted = asyncio.run(hammer(url, namespace, subject, float(limit), float(amount), int(count)))
    print(json.dumps({"granted": granted}))


if __name__ == "__main__":
    main(sys.argv[1:])
