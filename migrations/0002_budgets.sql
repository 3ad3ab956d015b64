-- The upstream budgets shared by every instance: one GCRA row per budget (generate, read).
-- `next_at` (microseconds since the epoch) is when the next request is granted without using the burst.
CREATE TABLE budgets (
    name    TEXT PRIMARY KEY,
    next_at BIGINT NOT NULL
);
