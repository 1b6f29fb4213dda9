"""The tables of the kiosk flows (issue 3): migration 2 of the gateway database.

In the dialect SQLite and PostgreSQL share; imported by :mod:`gateway.database`, so it
imports nothing of the gateway.
"""

MIGRATION = """
CREATE TABLE pickups (
    parcel_id TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    device TEXT NOT NULL,
    compartment TEXT NOT NULL,
    size TEXT NOT NULL,
    loaded_by TEXT NOT NULL,
    state TEXT NOT NULL,
    code TEXT NOT NULL,
    loaded_at DOUBLE PRECISION NOT NULL,
    valid_until DOUBLE PRECISION NOT NULL,
    picked_up_at DOUBLE PRECISION,
    load_event TEXT NOT NULL
);
CREATE INDEX pickups_store_state ON pickups (store, state);
CREATE TABLE clerks (
    store TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    badge_hash TEXT,
    pin_hash TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE TABLE store_secrets (
    store TEXT PRIMARY KEY,
    clerk_salt TEXT NOT NULL
);
CREATE TABLE kiosk_compartments (
    store TEXT NOT NULL,
    device TEXT NOT NULL,
    compartment TEXT NOT NULL,
    size TEXT,
    occupied_by TEXT,
    out_of_order BIGINT NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (store, device, compartment)
);
CREATE TABLE voucher_sync (
    store TEXT NOT NULL,
    device TEXT NOT NULL,
    session BIGINT NOT NULL,
    synced_until DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (store, device)
)
"""
"""Migration 2, appended to :data:`gateway.database.MIGRATIONS`."""
