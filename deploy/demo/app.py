"""A small asyncio shop for docker-compose: async-inspect attaches to it from another container.

It knows nothing of async-inspect or OpenTelemetry (standard library only); its environment
carries ASYNC_INSPECT_ENABLE=1, which is how the node daemon picks it. Every ~0.2 s it handles
a request: auth, then stock and price lookups in parallel tasks, then rendering. About 5% of
the requests fail (payment declined), and every 30th one blocks the event loop for 0.6 s, so
the dashboard's error, latency and "event loop blocked" panels all have something to show.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time


class PaymentDeclined(Exception):
    """The demo's one business error."""


async def auth_user(user: str) -> str:
    await asyncio.sleep(random.uniform(0.005, 0.02))
    return f"token-{user}"


async def db_query(table: str) -> int:
    await asyncio.sleep(random.uniform(0.01, 0.05))
    return random.randint(1, 100)


async def fetch_stock(item: str) -> int:
    return await db_query("stock")


async def fetch_price(item: str) -> float:
    return await db_query("prices") / 10


async def charge(amount: float) -> None:
    await asyncio.sleep(random.uniform(0.01, 0.03))
    if random.random() < 0.05:
        raise PaymentDeclined(f"card declined for {amount:.2f}")


def render_response(item: str, stock: int, price: float, slow: bool) -> str:
    if slow:
        time.sleep(0.6)  # deliberately blocking: what the EventLoopBlocked alert is for
    return f"{item}: {stock} left at {price:.2f}"


async def handle_request(number: int) -> str:
    item = random.choice(["book", "lamp", "mug"])
    await auth_user(f"user{number % 7}")
    stock_task = asyncio.create_task(fetch_stock(item), name=f"stock-{number}")
    price_task = asyncio.create_task(fetch_price(item), name=f"price-{number}")
    stock, price = await asyncio.gather(stock_task, price_task)
    await charge(price)
    return render_response(item, stock, price, slow=number % 30 == 0)


async def main() -> None:
    served = failed = 0
    for number in itertools.count(1):
        try:
            await handle_request(number)
            served += 1
        except PaymentDeclined:
            failed += 1
        if number % 100 == 0:
            print(f"demo: {served} requests served, {failed} failed", flush=True)
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(main())
