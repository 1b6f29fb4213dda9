"""The gateway's schema as numbered migrations, run in order at start-up (ADR 0004).

Each entry is one migration: statements separated by ``;``, in the DDL SQLite and
PostgreSQL share. ``AUTO_ID`` is the one dialect token: an auto-numbered primary key.
Never edit a migration that has shipped; append a new one.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.database import Transaction

MIGRATIONS: list[str] = [
    # 1: the spine
    """
    CREATE TABLE merchants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        refund_policy TEXT NOT NULL,
        currency TEXT NOT NULL
    );
    CREATE TABLE stores (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        config_version BIGINT NOT NULL DEFAULT 0,
        config_body TEXT
    );
    CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        private_key BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        active BIGINT NOT NULL
    );
    CREATE TABLE returns (
        id TEXT PRIMARY KEY,
        merchant TEXT NOT NULL REFERENCES merchants (id),
        order_id TEXT NOT NULL,
        items TEXT NOT NULL,
        item_count BIGINT NOT NULL,
        reason TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        method TEXT NOT NULL,
        size TEXT NOT NULL,
        stores TEXT NOT NULL,
        customer TEXT NOT NULL,
        state TEXT NOT NULL,
        short_code TEXT NOT NULL UNIQUE,
        voucher TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        store TEXT,
        device TEXT,
        tote_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX returns_tote ON returns (tote_id);
    CREATE INDEX returns_merchant_created ON returns (merchant, created_at);
    CREATE TABLE return_history (
        id AUTO_ID,
        return_id TEXT NOT NULL REFERENCES returns (id),
        from_state TEXT,
        to_state TEXT NOT NULL,
        cause_kind TEXT NOT NULL,
        cause_id TEXT,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX return_history_return ON return_history (return_id);
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        session BIGINT NOT NULL,
        type TEXT NOT NULL,
        historical BIGINT NOT NULL,
        envelope TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE dead_letters (
        id AUTO_ID,
        topic TEXT NOT NULL,
        payload BYTEA NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE totes (
        id TEXT PRIMARY KEY,
        store TEXT NOT NULL REFERENCES stores (id),
        state TEXT NOT NULL,
        item_count BIGINT NOT NULL DEFAULT 0,
        opened_at DOUBLE PRECISION NOT NULL,
        closed_at DOUBLE PRECISION,
        close_reason TEXT,
        carrier TEXT,
        waybill TEXT,
        pickup_start DOUBLE PRECISION,
        pickup_end DOUBLE PRECISION,
        booking_attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE UNIQUE INDEX totes_one_open ON totes (store) WHERE state = 'open';
    CREATE INDEX totes_waybill ON totes (waybill);
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        sent_at DOUBLE PRECISION,
        outcome TEXT,
        outcome_at DOUBLE PRECISION
    );
    CREATE TABLE tracking (
        carrier TEXT NOT NULL,
        waybill TEXT NOT NULL,
        state TEXT NOT NULL,
        carrier_state TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        detail TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (carrier, waybill, carrier_state, at)
    );
    CREATE TABLE refunds (
        return_id TEXT PRIMARY KEY REFERENCES returns (id),
        status TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_refund_id TEXT,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE device_presence (
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        online BIGINT NOT NULL,
        session BIGINT NOT NULL,
        version TEXT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (store, device)
    );
    """,
    # 2: per-device ordering, kiosk faults, tote capacity
    """
    CREATE TABLE device_cursors (
        device_key TEXT PRIMARY KEY,
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        applied_seq BIGINT NOT NULL,
        pending BIGINT NOT NULL
    );
    CREATE TABLE pending_events (
        event_id TEXT PRIMARY KEY REFERENCES events (id),
        device_key TEXT NOT NULL,
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX pending_events_device ON pending_events (device_key);
    CREATE TABLE kiosk_faults (
        event_id TEXT PRIMARY KEY REFERENCES events (id),
        store TEXT NOT NULL,
        device TEXT NOT NULL,
        kind TEXT NOT NULL,
        compartment TEXT,
        detail TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION
    );
    CREATE INDEX kiosk_faults_open ON kiosk_faults (store, device) WHERE resolved_at IS NULL;
    ALTER TABLE totes ADD COLUMN weight_kg DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE totes ADD COLUMN volume_l DOUBLE PRECISION NOT NULL DEFAULT 0
    """,
    # 3: kiosk flows (pickups, clerks, compartments, short-code sync)
    """
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
    """,
    # 4: carriers — the chosen service of a tote, shipments to track, the exception queue
    """
    ALTER TABLE totes ADD COLUMN service TEXT;
    ALTER TABLE totes ADD COLUMN product TEXT;
    ALTER TABLE totes ADD COLUMN choice TEXT;
    CREATE TABLE shipments (
        carrier TEXT NOT NULL,
        waybill TEXT NOT NULL,
        order_code TEXT NOT NULL,
        product TEXT NOT NULL,
        tote_id TEXT,
        return_id TEXT,
        booking_id TEXT,
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_news_at DOUBLE PRECISION NOT NULL,
        next_poll_at DOUBLE PRECISION NOT NULL,
        polls BIGINT NOT NULL DEFAULT 0,
        finished_at DOUBLE PRECISION,
        PRIMARY KEY (carrier, waybill)
    );
    CREATE INDEX shipments_due ON shipments (next_poll_at) WHERE finished_at IS NULL;
    CREATE INDEX shipments_tote ON shipments (tote_id);
    CREATE INDEX shipments_return ON shipments (return_id);
    CREATE TABLE carrier_exceptions (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        carrier TEXT,
        waybill TEXT,
        tote_id TEXT,
        return_id TEXT,
        carrier_state TEXT,
        opened_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION,
        resolution TEXT,
        resolved_by TEXT,
        note TEXT
    );
    CREATE UNIQUE INDEX carrier_exceptions_one_open ON carrier_exceptions (subject)
        WHERE resolved_at IS NULL;
    CREATE INDEX carrier_exceptions_opened ON carrier_exceptions (opened_at);
    """,
    # 5: refunds per merchant policy and provider, outgoing webhooks, customer notifications
    """
    CREATE TABLE refund_settings (
        merchant TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        review_above_minor BIGINT
    );
    ALTER TABLE refunds ADD COLUMN claim TEXT;
    ALTER TABLE refunds ADD COLUMN review_reason TEXT;
    ALTER TABLE refunds ADD COLUMN decided_by TEXT;
    ALTER TABLE refunds ADD COLUMN decided_at DOUBLE PRECISION;
    CREATE INDEX refunds_due ON refunds (status, next_attempt_at);
    CREATE TABLE return_flags (
        return_id TEXT NOT NULL REFERENCES returns (id),
        flag TEXT NOT NULL,
        note TEXT NOT NULL,
        source TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (return_id, flag)
    );
    CREATE TABLE webhook_endpoints (
        id TEXT PRIMARY KEY,
        merchant TEXT NOT NULL,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        secret TEXT NOT NULL,
        previous_secret TEXT,
        previous_secret_until DOUBLE PRECISION,
        active BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant);
    CREATE TABLE webhook_events (
        id TEXT PRIMARY KEY,
        merchant TEXT NOT NULL,
        type TEXT NOT NULL,
        dedupe_key TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES webhook_events (id),
        endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
        merchant TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        claim TEXT,
        last_status_code BIGINT,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
    CREATE INDEX webhook_deliveries_merchant ON webhook_deliveries (merchant, created_at);
    CREATE TABLE webhook_attempts (
        id AUTO_ID,
        delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
        attempt BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        status_code BIGINT,
        latency_ms DOUBLE PRECISION NOT NULL,
        error TEXT
    );
    CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);
    CREATE TABLE notifications (
        id TEXT PRIMARY KEY,
        return_id TEXT NOT NULL REFERENCES returns (id),
        kind TEXT NOT NULL,
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL,
        context TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        claim TEXT,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        sent_at DOUBLE PRECISION,
        UNIQUE (return_id, kind, channel)
    );
    CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
    """,
    # 6: replicas. One active signing key, so that replicas starting together on an empty
    # database agree on it; unanswered commands found without a scan.
    """
    CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (active) WHERE active = 1;
    CREATE INDEX commands_unanswered ON commands (outcome, sent_at);
    """,
    # 7: home pickups (上门取件): a courier collects one return at the customer's door.
    """
    CREATE TABLE home_pickups (
        return_id TEXT PRIMARY KEY REFERENCES returns (id),
        status TEXT NOT NULL,
        address TEXT NOT NULL,
        slot_start DOUBLE PRECISION NOT NULL,
        slot_end DOUBLE PRECISION NOT NULL,
        service TEXT,
        carrier TEXT,
        product TEXT,
        choice TEXT,
        waybill TEXT,
        booking_id TEXT,
        window_start DOUBLE PRECISION,
        window_end DOUBLE PRECISION,
        cancel_reason TEXT,
        maybe_booked BIGINT NOT NULL DEFAULT 0,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        claim TEXT,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX home_pickups_due ON home_pickups (status, next_attempt_at);
    """,
    # 8: the merchant API — tenant keys (hashed), approval rules, review and cancel details
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        merchant TEXT NOT NULL REFERENCES merchants (id),
        digest TEXT NOT NULL,
        label TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX api_keys_merchant ON api_keys (merchant);
    CREATE TABLE approval_rules (
        merchant TEXT PRIMARY KEY REFERENCES merchants (id),
        rules TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE returns ADD COLUMN approval_rule TEXT;
    ALTER TABLE returns ADD COLUMN cancel_reason TEXT;
    CREATE INDEX returns_merchant_state ON returns (merchant, state, created_at);
    """,
    # 9: pickup parcels registered by their merchant (who the customer is; a row with no
    # merchant is a parcel a kiosk loaded that nobody registered, gateway/pickup_parcels.py),
    # and customer notifications about a pickup parcel as well as a return: ``return_id`` may
    # be NULL now, so the table is rebuilt (SQLite cannot drop a NOT NULL). ``code_issue`` is
    # the ``parcel_loaded`` event that issued the pickup code a notice carries: one notice per
    # code issued and channel.
    """
    CREATE TABLE pickup_parcels (
        parcel_id TEXT PRIMARY KEY,
        merchant TEXT REFERENCES merchants (id),
        order_id TEXT,
        store TEXT REFERENCES stores (id),
        customer TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        CHECK ((merchant IS NULL) = (customer IS NULL))
    );
    CREATE INDEX pickup_parcels_merchant ON pickup_parcels (merchant, created_at);
    CREATE TABLE notifications_v9 (
        id TEXT PRIMARY KEY,
        return_id TEXT REFERENCES returns (id),
        parcel_id TEXT,
        code_issue TEXT,
        kind TEXT NOT NULL,
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL,
        context TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        claim TEXT,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        sent_at DOUBLE PRECISION,
        UNIQUE (return_id, kind, channel),
        UNIQUE (code_issue, kind, channel),
        CHECK ((return_id IS NULL) <> (parcel_id IS NULL)),
        CHECK ((parcel_id IS NULL) = (code_issue IS NULL))
    );
    INSERT INTO notifications_v9 (id, return_id, kind, channel, recipient, context, status,
        attempts, next_attempt_at, claim, last_error, created_at, sent_at)
    SELECT id, return_id, kind, channel, recipient, context, status, attempts,
        next_attempt_at, claim, last_error, created_at, sent_at FROM notifications;
    DROP TABLE notifications;
    ALTER TABLE notifications_v9 RENAME TO notifications;
    CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
    CREATE INDEX notifications_parcel ON notifications (parcel_id, created_at)
    """,
    # 10: events are acked once stored and applied behind (ADR 0018): ``sequenced`` = handed
    # to the per-device ordering (applied, or waiting in pending_events for a gap)
    """
    ALTER TABLE events ADD COLUMN sequenced BIGINT NOT NULL DEFAULT 1;
    CREATE INDEX events_unsequenced ON events (received_at) WHERE sequenced = 0;
    CREATE INDEX events_unsequenced_live ON events (received_at) WHERE sequenced = 0 AND seq = 0;
    """,
]


async def migrate(tx: "Transaction", auto_id: str) -> int:
    """Run the migrations ``tx``'s database has not had yet; returns the schema version."""
    await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT)")
    row = await tx.fetchone("SELECT max(version) FROM schema_version")
    current = int(row[0]) if row and row[0] is not None else 0
    for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
        for statement in filter(str.strip, script.split(";")):
            await tx.execute(statement.replace("AUTO_ID", auto_id))
        await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return len(MIGRATIONS)
