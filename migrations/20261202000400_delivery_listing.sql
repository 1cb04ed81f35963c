-- Indexes for finding deliveries (GET /v1/deliveries, POST /v1/replays,
-- `postback deliveries list`, `postback replay`): newest first, keyset
-- paged on (created_at, id), so every filtered page is one index range scan
-- that stops after LIMIT rows, however many millions the table holds.
--
-- Chosen to cost the hot path little. Every claim and completion rewrites
-- its row (next_attempt_at is indexed, so updates are never HOT) and so
-- inserts into every index whose predicate the new row version matches:
-- * full indexes (created, host) are paid on every state change: only two;
-- * the customer one replaces `deliveries_customer` (customer erasure's
--   `WHERE customer_id = $1` uses its leading column): no extra cost;
-- * the `failed` partial indexes are written only when a delivery gives up
--   (rare, and the incident case they serve): the newest failed deliveries
--   of one customer or host stay an index scan even when almost every row
--   of that customer or host was delivered.
-- docs/operations.md "Finding deliveries" shows the plans.

CREATE INDEX deliveries_created ON deliveries (created_at DESC, id DESC);
CREATE INDEX deliveries_host_created ON deliveries (host, created_at DESC, id DESC);
CREATE INDEX deliveries_customer_created ON deliveries (customer_id, created_at DESC, id DESC)
    WHERE customer_id IS NOT NULL;
DROP INDEX deliveries_customer;

CREATE INDEX deliveries_failed_created ON deliveries (created_at DESC, id DESC)
    WHERE state = 'failed';
CREATE INDEX deliveries_failed_customer ON deliveries (customer_id, created_at DESC, id DESC)
    WHERE state = 'failed' AND customer_id IS NOT NULL;
CREATE INDEX deliveries_failed_host ON deliveries (host, created_at DESC, id DESC)
    WHERE state = 'failed';

-- "Delivered and failed in the last hour" (GET /v1/stats, the console's
-- overview): a range of this index, written once per delivery, when it
-- ends (replay clears completed_at, so a row leaves it again).
CREATE INDEX deliveries_completed ON deliveries (completed_at, state)
    WHERE completed_at IS NOT NULL;
