-- ablate store schema, version 1. Documented in ARCHITECTURE.md ("The store").
-- Timestamps are RFC 3339 UTC text; heartbeats are Unix milliseconds.

CREATE TABLE pipelines (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    source_hash TEXT NOT NULL,          -- SHA-256 of the file's text
    path        TEXT NOT NULL,          -- as given on the command line
    source      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    plan_hash   TEXT,                   -- hash of the node keys last registered for this text
    UNIQUE (name, source_hash)
);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    pipeline_id    INTEGER REFERENCES pipelines(id),
    command        TEXT NOT NULL,       -- run | exec
    argv           TEXT NOT NULL,       -- JSON array
    host           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    user           TEXT NOT NULL,
    git_revision   TEXT,
    ablate_version TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    heartbeat_at   INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted', 'lost'))
);

CREATE TABLE stage_instances (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,  -- content address (see pipeline::key)
    kind         TEXT NOT NULL,
    kind_version INTEGER NOT NULL,
    params       TEXT NOT NULL,         -- canonical JSON of resolved parameters
    created_at   TEXT NOT NULL
);

-- Where an instance appears: (pipeline, stage name, axis values). One instance
-- may appear in many pipelines and stages (that is shared work).
CREATE TABLE instance_bindings (
    pipeline_name TEXT NOT NULL,
    stage         TEXT NOT NULL,
    axes          TEXT NOT NULL,        -- canonical JSON object
    instance_id   INTEGER NOT NULL REFERENCES stage_instances(id),
    pipeline_id   INTEGER NOT NULL REFERENCES pipelines(id),
    seen_at       TEXT NOT NULL,
    PRIMARY KEY (pipeline_name, stage, axes, instance_id)
);
CREATE INDEX instance_bindings_instance ON instance_bindings(instance_id);

CREATE TABLE edges (
    upstream_id   INTEGER NOT NULL REFERENCES stage_instances(id),
    downstream_id INTEGER NOT NULL REFERENCES stage_instances(id),
    stage         TEXT NOT NULL,        -- the `needs` name the downstream used
    PRIMARY KEY (downstream_id, upstream_id)
);
CREATE INDEX edges_upstream ON edges(upstream_id);

-- 'invalidated': a done attempt whose artifacts were later found missing or corrupt.
CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    instance_id  INTEGER NOT NULL REFERENCES stage_instances(id),
    status       TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'skipped', 'interrupted', 'lost', 'invalidated')),
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    heartbeat_at INTEGER NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    device       TEXT NOT NULL DEFAULT 'cpu',
    error        TEXT
);
CREATE INDEX attempts_instance ON attempts(instance_id, status);
CREATE INDEX attempts_run ON attempts(run_id);
-- At most one live claim per instance: the database, not the scheduler,
-- guarantees a stage is never computed twice at the same time.
CREATE UNIQUE INDEX attempts_one_running ON attempts(instance_id) WHERE status = 'running';

-- Content-addressed files under objects/. mtime_ns and bytes are what the file
-- had when it was verified, so a cheap stat tells whether to re-hash it.
CREATE TABLE objects (
    hash     TEXT PRIMARY KEY,
    bytes    INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);

CREATE TABLE artifacts (
    id          INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES stage_instances(id),
    attempt_id  INTEGER NOT NULL REFERENCES attempts(id),
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL REFERENCES objects(hash),
    bytes       INTEGER NOT NULL,
    path        TEXT NOT NULL,          -- relative to the workspace
    UNIQUE (attempt_id, name)
);
CREATE INDEX artifacts_hash ON artifacts(hash);
CREATE INDEX artifacts_instance ON artifacts(instance_id);

CREATE TABLE metrics (
    instance_id INTEGER NOT NULL,
    attempt_id  INTEGER NOT NULL,
    name        TEXT NOT NULL,
    step        INTEGER,                -- NULL for a final value
    value       REAL                    -- NULL for NaN or an infinity (SQLite stores no NaN)
);
-- attempt_id alone: a wider (attempt_id, name) index costs a third of the
-- insert throughput, and an attempt's rows are few enough to filter by name.
CREATE INDEX metrics_attempt ON metrics(attempt_id);

-- The attempt whose outputs an instance currently stands for.
CREATE VIEW v_done AS
SELECT instance_id, MAX(id) AS attempt_id, MAX(ended_at) AS done_at
FROM attempts WHERE status = 'done' GROUP BY instance_id;

-- Instances with where they appear and their latest state.
CREATE VIEW v_instances AS
SELECT b.pipeline_name AS pipeline, b.stage, b.axes, i.key, i.kind, i.params,
       (SELECT a.status FROM attempts a WHERE a.instance_id = i.id ORDER BY a.id DESC LIMIT 1) AS status,
       d.done_at
FROM instance_bindings b
JOIN stage_instances i ON i.id = b.instance_id
LEFT JOIN v_done d ON d.instance_id = i.id;

-- Final metrics of finished instances: the value without a step, else the last step.
CREATE VIEW v_metrics AS
SELECT i.key, i.kind, m.name,
       COALESCE(
         (SELECT m2.value FROM metrics m2 WHERE m2.attempt_id = d.attempt_id AND m2.name = m.name AND m2.step IS NULL ORDER BY rowid DESC LIMIT 1),
         (SELECT m3.value FROM metrics m3 WHERE m3.attempt_id = d.attempt_id AND m3.name = m.name ORDER BY m3.step DESC LIMIT 1)
       ) AS value
FROM v_done d
JOIN stage_instances i ON i.id = d.instance_id
JOIN (SELECT DISTINCT attempt_id, name FROM metrics) m ON m.attempt_id = d.attempt_id;

-- One row per (pipeline, stage, axis values, metric) of finished work: the
-- shape `ablate results` and the dashboards pivot.
CREATE VIEW v_results AS
SELECT b.pipeline_name AS pipeline, b.stage, b.axes, vm.key, vm.kind, vm.name AS metric, vm.value
FROM v_metrics vm
JOIN stage_instances i ON i.key = vm.key
JOIN instance_bindings b ON b.instance_id = i.id;

-- Runs with their pipeline and outcome counts.
CREATE VIEW v_runs AS
SELECT r.id, p.name AS pipeline, r.command, r.status, r.host, r.user, r.started_at, r.ended_at,
       (julianday(COALESCE(r.ended_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) - julianday(r.started_at)) * 86400.0 AS duration_s,
       (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id AND a.status = 'done') AS done,
       (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id AND a.status = 'failed') AS failed,
       (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id AND a.status = 'skipped') AS skipped
FROM runs r LEFT JOIN pipelines p ON p.id = r.pipeline_id;
