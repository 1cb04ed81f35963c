-- The delivery an open breaker let go as its probe. Only that delivery's
-- failure re-opens the breaker with the cooldown doubled: a late failure of
-- an attempt that started before the breaker opened is counted, and its
-- delivery held, but it neither re-opens the breaker nor holds the probe
-- again (which left the breaker half open with no probe out until the
-- deliveries' horizon).
ALTER TABLE destinations ADD COLUMN probe_id uuid;
