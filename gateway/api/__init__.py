"""The gateway's REST API (aiohttp): one module per resource, one route table.

| module            | routes                                                        | who      |
|-------------------|---------------------------------------------------------------|----------|
| ``returns``       | authorize, list, read, cancel; voucher images, short codes    | merchant |
| ``reviews``       | the review queue; the auto-approval rules                     | merchant |
| ``refunds``       | refund decisions, risk flags; refund system callback (signed) | merchant |
| ``notifications`` | a return's customer messages                                  | merchant |
| ``parcels``       | pickup parcels: registration, their customer messages         | merchant |
| ``webhooks``      | webhook endpoints and deliveries                              | merchant |
| ``reports``       | return reasons, drop-offs, refund time, carrier exceptions    | merchant |
| ``tenants``       | tenants, their API keys, stores                               | operator |
| ``kiosk``         | pickups, clerks, compartments, kiosk commands                 | operator |
| ``exceptions``    | the carrier exception queue                                   | operator |
| ``carriers``      | carriers' tracking pushes                                     | signed   |
| ``health``        | liveness (open), metrics (operator)                           |          |
| ``openapi``       | ``GET /v1/openapi.json``                                      | open     |

``merchant``: a tenant's key (its own data) or the operator's. ``gateway/api/auth.py`` says
how keys are checked; ``gateway/api/routes.py`` what a route declares; ``app.py`` holds the
table.
"""

from gateway.api.app import ROUTES, make_app
from gateway.api.errors import GATEWAY, ApiError, error

__all__ = ["GATEWAY", "ROUTES", "ApiError", "error", "make_app"]
