-- Issue 7: runs that hand their DAG to Slurm, and what each job did.
-- Written for both backends alike (see the other directory's 0002).

-- 'local' or 'slurm'. A Slurm run's liveness is its jobs', not its submitting
-- process's: it is never presumed lost because that process went away.
ALTER TABLE runs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local';

-- The Slurm job an attempt ran in (the array's job id and the task for an
-- array task), how the job ended (Slurm state and exit code) and its log.
ALTER TABLE attempts ADD COLUMN slurm_job_id TEXT;
ALTER TABLE attempts ADD COLUMN slurm_array_task INTEGER;
ALTER TABLE attempts ADD COLUMN exit_state TEXT;
ALTER TABLE attempts ADD COLUMN log_path TEXT;
CREATE INDEX attempts_slurm ON attempts(slurm_job_id, slurm_array_task);

-- Every job (or array task) submitted for an instance. A row is open
-- (ended_at NULL) while the job may still be pending or running; whoever
-- follows the study closes it once the job is over and its outcome recorded.
CREATE TABLE slurm_jobs (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id),    -- the run that submitted it
    follower_id  INTEGER NOT NULL REFERENCES runs(id),    -- the run following it now (a rerun adopts it)
    instance_id  INTEGER NOT NULL REFERENCES stage_instances(id),
    job_id       TEXT NOT NULL,                          -- for an array task: the array's job id
    array_task   INTEGER,                                  -- NULL for a plain job
    log_path     TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    state        TEXT NOT NULL,                          -- last state Slurm reported (PENDING, RUNNING, COMPLETED, ...)
    reason       TEXT,                                   -- Slurm's reason for that state
    node         TEXT,
    exit_code    TEXT,                                   -- Slurm's ExitCode, "status:signal"
    cancelled    INTEGER NOT NULL DEFAULT 0,               -- 1 once ablate asked Slurm to cancel it
    ended_at     TEXT
);
CREATE INDEX slurm_jobs_instance ON slurm_jobs(instance_id);
CREATE INDEX slurm_jobs_open ON slurm_jobs(follower_id) WHERE ended_at IS NULL;
CREATE INDEX slurm_jobs_job ON slurm_jobs(job_id, array_task);
