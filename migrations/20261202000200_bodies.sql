-- One stored copy of each distinct callback body (SPEC §3: "one result's
-- rendered callbacks are stored once per distinct body"): a result with 32
-- analytics callbacks of one shape stores its body once, not 32 times.
-- Payloads name their body by its SHA-256; `payloads.body` stays for rows
-- written before this migration (and single generic deliveries), and a read
-- takes whichever is set.
CREATE TABLE bodies (
    hash       bytea PRIMARY KEY,              -- sha256(body)
    body       bytea NOT NULL,
    -- Refreshed whenever a new payload reuses the body, so the purge (which
    -- removes bodies no payload names) never races a payload being written.
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE payloads ADD COLUMN body_hash bytea;
CREATE INDEX payloads_body_hash ON payloads (body_hash) WHERE body_hash IS NOT NULL;
