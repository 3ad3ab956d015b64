-- One row a write probe rewrites, to tell whether the database takes writes (`check_writable`).
CREATE TABLE probe (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL
);
