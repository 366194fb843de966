-- Which upstream attempts each attempt read: lineage at the level of the
-- outputs themselves. An instance's key names its upstream instances, not
-- their bytes; when an upstream reruns and writes other bytes (a `--force`
-- of a nondeterministic stage), a done attempt that read the old ones is
-- stale, and this is how `plan` knows. Written for both backends alike (see
-- the other directory's 0003).
CREATE TABLE attempt_inputs (
    attempt_id          BIGINT NOT NULL REFERENCES attempts(id),
    upstream_attempt_id BIGINT NOT NULL REFERENCES attempts(id),
    PRIMARY KEY (attempt_id, upstream_attempt_id)
);
