"""Rows a benchmark's gateway database needs before anything else: the merchant and the
stores (the gateway seeds the same from its configuration when it starts)."""

from gateway.database import Transaction

MERCHANT = "acme"


async def seed(tx: Transaction, stores: list[str]) -> None:
    """The merchant ``acme`` (refunds on receipt) and ``stores``, named after their ids."""
    await tx.execute(
        "INSERT INTO merchants (id, name, refund_policy, currency) VALUES (?, ?, ?, ?)",
        (MERCHANT, "ACME", "on_receipt", "CNY"),
    )
    await tx.executemany("INSERT INTO stores (id, name) VALUES (?, ?)", [(s, s) for s in stores])
