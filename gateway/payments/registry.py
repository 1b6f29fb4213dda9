"""Which payment provider pays each merchant's refunds: decided here, from configuration,
and nowhere else.

A provider is known by a key: ``stripe`` for the shared Stripe-style account,
``merchant-system:{merchant}`` for a merchant's own refund system. The key is written on
each refund row when it is requested, so a refund whose outcome is unknown is always
reconciled with the provider it went to, even if the configuration changes meanwhile.
"""

import aiohttp

from gateway.config import GatewayConfig, MerchantSettings
from gateway.payments.base import PaymentProvider
from gateway.payments.merchant_system import MerchantSystemRefunds
from gateway.payments.stripe_like import StripeLikeRefunds

STRIPE = "stripe"
DEFAULT_PROVIDER = STRIPE
"""For merchants the configuration does not mention (e.g. created through the API)."""


def provider_key(merchant: MerchantSettings) -> str:
    """The key of the provider that pays ``merchant``'s refunds."""
    if merchant.refund_provider == "merchant_system":
        return f"merchant-system:{merchant.id}"
    return STRIPE


def callback_url(config: GatewayConfig, merchant: str) -> str:
    """Where ``merchant``'s system posts the outcome of a refund it finished later."""
    return f"{config.base_url}/v1/payments/merchant-system/{merchant}/callback"


def make_providers(
    config: GatewayConfig, session: aiohttp.ClientSession
) -> dict[str, PaymentProvider]:
    """Every configured provider by key."""
    s = config.stripe
    providers: dict[str, PaymentProvider] = {
        STRIPE: StripeLikeRefunds(s.base_url, s.api_key, session, timeout_s=s.timeout_s)
    }
    for m in config.merchants:
        if m.merchant_system is not None and m.refund_provider == "merchant_system":
            ms = m.merchant_system
            providers[provider_key(m)] = MerchantSystemRefunds(
                m.id,
                ms.url,
                ms.secret,
                session,
                callback_url=callback_url(config, m.id),
                timeout_s=ms.timeout_s,
            )
    return providers
