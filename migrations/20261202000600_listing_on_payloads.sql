-- Cut what every state change of a delivery costs (the performance issue).
--
-- `deliveries` is rewritten by every claim and every completion, and those
-- updates are never HOT (next_attempt_at is indexed), so each one inserts a
-- new entry into every index whose predicate the new row version matches.
-- The three listing indexes of 20261202000400 were full indexes on it: three
-- index inserts per state change, measured as about a third of the WAL and
-- half of PostgreSQL's time of a claim + completion.
--
-- What a listing filters and orders on (created_at, host, customer) never
-- changes after a delivery is queued, so it moves to `payloads`, the half of
-- a delivery that is written once and never updated: its indexes cost one
-- insert per delivery, whatever happens to it afterwards. Listing pages are
-- chosen on `payloads` (index range + LIMIT) and joined with `deliveries` by
-- primary key; the `failed` partial indexes stay on `deliveries` (written
-- only when a delivery gives up, and they carry the state the filter needs).

ALTER TABLE payloads ADD COLUMN created_at timestamptz;
ALTER TABLE payloads ADD COLUMN host text;
ALTER TABLE payloads ADD COLUMN customer_id text;
UPDATE payloads p SET created_at = d.created_at, host = d.host, customer_id = d.customer_id
FROM deliveries d WHERE d.id = p.delivery_id;
-- A payload's row is written in the same transaction as its delivery, so
-- now() is the delivery's created_at too.
ALTER TABLE payloads ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE payloads ALTER COLUMN created_at SET NOT NULL;
ALTER TABLE payloads ALTER COLUMN host SET NOT NULL;

DROP INDEX deliveries_created;
DROP INDEX deliveries_host_created;
DROP INDEX deliveries_customer_created;
CREATE INDEX payloads_created ON payloads (created_at DESC, delivery_id DESC);
CREATE INDEX payloads_host_created ON payloads (host, created_at DESC, delivery_id DESC);
-- Also customer erasure's `WHERE customer_id = $1` (its leading column).
CREATE INDEX payloads_customer_created ON payloads (customer_id, created_at DESC, delivery_id DESC)
    WHERE customer_id IS NOT NULL;

-- Retention only ever deletes final deliveries (SPEC §3), so only final row
-- versions need to be found by expiry: one index insert per delivery instead
-- of one per state change.
DROP INDEX deliveries_expiry;
CREATE INDEX deliveries_expiry ON deliveries (expires_at) WHERE state IN ('delivered', 'failed');

-- The customer of a delivery is checked by the insert itself (it locks the
-- customer's row FOR KEY SHARE once per batch, not once per row as the
-- foreign key's trigger did), and erasure deletes the customer's row only
-- after taking it FOR UPDATE and finding no delivery of it left.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_customer_id_fkey;
