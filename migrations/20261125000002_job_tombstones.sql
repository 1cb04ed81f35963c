-- Ids of purged jobs, so polling an expired job answers `job_expired`
-- (SPEC §2) rather than `job_not_found` after the purge removed it.
CREATE TABLE job_tombstones (
    id         text PRIMARY KEY,
    expired_at timestamptz NOT NULL,
    purged_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_tombstones_purged ON job_tombstones (purged_at);
