"""The Dropline contract shared by kiosks and the gateway: topics, envelopes, message
schemas and voucher tokens. Pure: no I/O happens in this package."""
