-- Circuit breakers per destination origin (SPEC §3), shared by every
-- process through this table. A row exists once an origin has failed.
CREATE TABLE destinations (
    origin               text PRIMARY KEY,           -- scheme://host:port
    state                text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open')),
    consecutive_failures int NOT NULL DEFAULT 0,
    opened_at            timestamptz,
    cooldown_secs        float8,                     -- doubles on each failed probe
    next_probe_at        timestamptz,                -- open: when the next probe may go
    probing_since        timestamptz,                -- open: a probe is out (shown as half_open)
    hold_secs            float8,                     -- open: how long new deliveries wait at most (the give-up horizon)
    last_error           text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX destinations_probe ON destinations (next_probe_at) WHERE state = 'open';

-- The origin of each delivery, and, while an open breaker holds it, the
-- time it was due: held deliveries wait at their give-up horizon (so the
-- last attempt still goes) and come back at `held_due` when the breaker
-- closes.
ALTER TABLE deliveries ADD COLUMN origin text;
ALTER TABLE deliveries ADD COLUMN held_due timestamptz;
CREATE INDEX deliveries_origin_queued ON deliveries (origin) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_held ON deliveries (origin, held_due) WHERE held_due IS NOT NULL;
