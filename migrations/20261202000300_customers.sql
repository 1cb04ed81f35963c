-- Customers (SPEC §2 "Customers"): who a callback is for, and the secrets
-- its callbacks are signed with.
CREATE TABLE customers (
    id         text PRIMARY KEY,
    name       text,
    metadata   jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Set by DELETE: the customer is gone for the API at once, and its rows
    -- are erased in bounded batches; the row itself goes last.
    deleted_at timestamptz
);

-- Every live signing secret of a customer: the current one (expires_at
-- NULL) and those rotated out, signed with until their grace ends.
-- `secret` is the whsec_ text, sealed when POSTBACK_SECRETS_KEY is set.
CREATE TABLE customer_secrets (
    customer_id text NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz,
    secret      text NOT NULL,
    PRIMARY KEY (customer_id, created_at)
);
-- One current secret per customer.
CREATE UNIQUE INDEX customer_secrets_current ON customer_secrets (customer_id) WHERE expires_at IS NULL;

-- No cascade: erasing a customer deletes its jobs and deliveries in
-- batches first, so no single transaction grows with the customer's size.
ALTER TABLE jobs ADD COLUMN customer_id text REFERENCES customers (id);
ALTER TABLE deliveries ADD COLUMN customer_id text REFERENCES customers (id);
CREATE INDEX jobs_customer ON jobs (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX deliveries_customer ON deliveries (customer_id) WHERE customer_id IS NOT NULL;
