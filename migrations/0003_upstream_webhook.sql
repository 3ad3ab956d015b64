-- agenthook's own webhook registration with bitHuman (its secret is shown once upstream).
CREATE TABLE upstream_webhook (
    name   TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
