-- Queries of the Postgres queue repository, one named block each (loaded once by mindscript.queue.sql).
-- Each block: a "-- name --" line, optional "-- " description lines, then one statement with psycopg
-- %(name)s parameters. The logic lives in the SQL functions of supabase/migrations (shared with the REST
-- transport); these blocks only call them.

-- enqueue --
-- Insert a job as the service (the app inserts into the table directly)
SELECT * FROM audio_job_enqueue(%(payload)s, %(priority)s, %(user_id)s, %(max_attempts)s, %(delay_seconds)s);

-- claim --
-- Claim up to %(limit)s jobs for a worker, highest priority and oldest first, with a lease
SELECT * FROM audio_job_claim(%(worker_id)s, %(limit)s, %(lease_seconds)s);

-- start --
-- The render flow run of this attempt started
SELECT audio_job_start(%(id)s, %(attempt)s, %(worker_id)s, %(flow_run_id)s, %(lease_seconds)s) AS applied;

-- set_flow_run --
-- Ingest created the flow run of this attempt
SELECT audio_job_set_flow_run(%(id)s, %(attempt)s, %(flow_run_id)s) AS applied;

-- extend_lease --
SELECT audio_job_extend_lease(%(id)s, %(attempt)s, %(lease_seconds)s) AS applied;

-- progress --
SELECT audio_job_progress(%(id)s, %(attempt)s, %(progress)s, %(stage)s, %(message)s) AS applied;

-- complete --
SELECT audio_job_complete(%(id)s, %(attempt)s, %(result)s) AS applied;

-- fail --
-- Returns the new status (pending after a transient failure with attempts left, else failed), or null
SELECT audio_job_fail(%(id)s, %(attempt)s, %(error)s, %(permanent)s, %(result)s,
                      %(backoff_base_seconds)s, %(backoff_max_seconds)s) AS status;

-- cancel --
SELECT audio_job_cancel(%(id)s, %(attempt)s, %(message)s) AS applied;

-- release --
-- Give a claimed job back without spending an attempt (graceful shutdown)
SELECT audio_job_release(%(id)s, %(attempt)s, %(message)s) AS applied;

-- requeue_expired --
SELECT * FROM audio_job_requeue_expired(%(backoff_base_seconds)s, %(backoff_max_seconds)s);

-- active --
SELECT * FROM audio_job_active(%(worker_id)s);

-- get --
SELECT * FROM audio_job_get(%(id)s);

-- stats --
SELECT audio_job_stats() AS stats;

-- ping --
SELECT 1 AS ok;
