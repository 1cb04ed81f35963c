-- Postback's schema. Tables are unqualified: they land in the schema that
-- `postback::migrate` puts first on the search_path (default `postback`).

-- Process-wide settings kept in the database (the generated signing secret).
CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per registered job (SPEC §2 "Jobs").
CREATE TABLE jobs (
    id           text PRIMARY KEY,
    -- The creation request as accepted (canonical JSON), to answer a replayed
    -- POST /v1/jobs with 200 (same body) or 409 (different body).
    request      jsonb NOT NULL,
    metadata     jsonb,
    -- [{"deliveryId": uuid, "spec": CallbackSpec}]: delivery ids are fixed at
    -- creation so polling shows them from the start.
    callbacks    jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'in_progress'
                 CHECK (status IN ('in_progress', 'completed', 'failed')),
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX jobs_expiry ON jobs (expires_at);

-- The queue: one row per delivery, kept small because claim and completion
-- rewrite it on every attempt (the payload lives in `payloads`).
CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,          -- webhook-id; UUIDv7, time ordered
    job_id           text REFERENCES jobs (id) ON DELETE CASCADE,
    kind             text NOT NULL,             -- analytics | transcript | media | generic
    method           text NOT NULL,
    url              text NOT NULL,
    host             text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
    -- Due time while pending; lease expiry while delivering (so a delivery
    -- whose worker died becomes due again by itself); NULL once final.
    next_attempt_at  timestamptz,
    lease            uuid,                       -- fences completions of an expired lease
    attempts         int NOT NULL DEFAULT 0,     -- every attempt ever made
    cycle_attempts   int NOT NULL DEFAULT 0,     -- attempts of the current schedule (reset by replay)
    cycle_started_at timestamptz,                -- first attempt of the current schedule
    last_attempt_at  timestamptz,
    last_status_code int,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz NOT NULL DEFAULT now(),  -- reset by replay; latency is measured from it
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL
) WITH (fillfactor = 70);

-- The claim path: only rows that still have a due time are indexed, so
-- delivered and failed rows cost the claim nothing however many there are.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_job ON deliveries (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX deliveries_expiry ON deliveries (expires_at);

-- The queue churns: vacuum and analyze it long before the defaults would.
ALTER TABLE deliveries SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);

-- What to send: written once, read at claim, never updated.
CREATE TABLE payloads (
    delivery_id  uuid PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    content_type text NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}',
    auth         jsonb,
    body         bytea,
    file_path    text                          -- media streams are sent from the file
);

-- One row per HTTP attempt.
CREATE TABLE attempts (
    delivery_id      uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          int NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      int NOT NULL,
    status_code      int,
    error            text,                      -- outcome class; NULL on success
    response_snippet text,                      -- first 1 KiB of the response
    PRIMARY KEY (delivery_id, attempt)
);
