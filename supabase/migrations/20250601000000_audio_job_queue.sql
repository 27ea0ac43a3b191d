-- The render queue: one row per job. The app inserts rows (payload only is enough) and watches them through
-- Realtime; workers claim, update and finish them through the functions below, as the service role.
-- Plain SQL in the Supabase CLI layout; on plain Postgres apply supabase/tests/bootstrap.sql first.

create table if not exists public.audio_job_queue (
  id            uuid primary key default gen_random_uuid(),   -- the job id
  user_id       uuid default auth.uid(),                      -- owner; null for jobs the service inserts
  status        text not null default 'pending'
                check (status in ('pending', 'processing', 'completed', 'failed', 'cancelled')),
  payload       jsonb not null,                               -- {type, projectData, outputOptions}
  priority      integer not null default 0,                   -- higher first
  attempts      integer not null default 0 check (attempts >= 0),
  max_attempts  integer not null default 3 check (max_attempts >= 1),
  available_at  timestamptz not null default now(),           -- not claimed before (backoff)
  progress      double precision not null default 0 check (progress >= 0 and progress <= 100),
  stage         text,
  message       text,
  result        jsonb,                                        -- the render result object
  error         text,                                         -- last error message
  worker_id     text,
  flow_run_id   uuid,                                         -- the Prefect flow run of the current attempt
  locked_until  timestamptz,                                  -- lease of the current attempt
  created_at    timestamptz not null default now(),
  started_at    timestamptz,
  finished_at   timestamptz,
  updated_at    timestamptz not null default now()
);

comment on table public.audio_job_queue is 'MindScript render jobs; the row id is the job id.';

-- The claim scans pending rows in (priority desc, created_at) order; the partial index holds only those.
create index if not exists audio_job_queue_claim_idx
  on public.audio_job_queue (priority desc, created_at, id) where status = 'pending';
-- Expired leases and reconciliation look at processing rows only.
create index if not exists audio_job_queue_lease_idx
  on public.audio_job_queue (locked_until) where status = 'processing';
-- The app lists a user's jobs, newest first.
create index if not exists audio_job_queue_user_idx on public.audio_job_queue (user_id, created_at desc);

create or replace function public.audio_job_touch() returns trigger
language plpgsql
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

drop trigger if exists audio_job_queue_touch on public.audio_job_queue;
create trigger audio_job_queue_touch before update on public.audio_job_queue
  for each row execute function public.audio_job_touch();

-- Row Level Security: an app user reads and inserts only their own rows; only the service role (which
-- bypasses RLS) claims and updates. Column grants keep users from inserting a finished or claimed row.
alter table public.audio_job_queue enable row level security;

drop policy if exists audio_job_queue_select_own on public.audio_job_queue;
create policy audio_job_queue_select_own on public.audio_job_queue
  for select to authenticated using (user_id = auth.uid());

drop policy if exists audio_job_queue_insert_own on public.audio_job_queue;
create policy audio_job_queue_insert_own on public.audio_job_queue
  for insert to authenticated with check (user_id = auth.uid());

revoke all on public.audio_job_queue from anon, authenticated;
grant select on public.audio_job_queue to authenticated;
grant insert (id, user_id, payload, priority) on public.audio_job_queue to authenticated;
grant all on public.audio_job_queue to service_role;

-- Realtime: the app subscribes to its rows' progress.
do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (select 1 from pg_publication_tables
                     where pubname = 'supabase_realtime' and schemaname = 'public'
                       and tablename = 'audio_job_queue') then
    alter publication supabase_realtime add table public.audio_job_queue;
  end if;
end
$$;

-- ---------------------------------------------------------------------------------------------------------
-- Service functions. Every write after the claim is fenced by (id, attempt): a worker that lost its lease
-- (and whose row was claimed again) can no longer change the row. Each returns whether it applied.
-- ---------------------------------------------------------------------------------------------------------

-- Claim up to p_limit available jobs, highest priority and oldest first, with a lease of p_lease_seconds.
create or replace function public.audio_job_claim(p_worker_id text, p_limit integer, p_lease_seconds integer)
returns setof public.audio_job_queue
language sql volatile
as $$
  with picked as (
    select id from public.audio_job_queue
     where status = 'pending' and available_at <= now()
     order by priority desc, created_at, id
     limit greatest(p_limit, 0)
     for update skip locked
  )
  update public.audio_job_queue q
     set status = 'processing', attempts = q.attempts + 1, worker_id = p_worker_id,
         locked_until = now() + make_interval(secs => p_lease_seconds), started_at = now(),
         finished_at = null, flow_run_id = null, progress = 0, stage = null,
         message = 'Claimed by ' || p_worker_id
    from picked
   where q.id = picked.id
  returning q.*
$$;

-- The render flow run started: record it, reset progress, renew the lease.
create or replace function public.audio_job_start(p_id uuid, p_attempt integer, p_worker_id text,
                                                  p_flow_run_id uuid, p_lease_seconds integer)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue
       set worker_id = coalesce(p_worker_id, worker_id), flow_run_id = coalesce(p_flow_run_id, flow_run_id),
           started_at = now(), locked_until = now() + make_interval(secs => p_lease_seconds),
           progress = 0, stage = 'INITIALIZING', message = 'Render started'
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

-- Ingest created the flow run for this attempt.
create or replace function public.audio_job_set_flow_run(p_id uuid, p_attempt integer, p_flow_run_id uuid)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue set flow_run_id = p_flow_run_id
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

create or replace function public.audio_job_extend_lease(p_id uuid, p_attempt integer, p_lease_seconds integer)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue set locked_until = now() + make_interval(secs => p_lease_seconds)
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

create or replace function public.audio_job_progress(p_id uuid, p_attempt integer, p_progress double precision,
                                                     p_stage text, p_message text)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue
       set progress = least(100, greatest(0, p_progress)), stage = p_stage, message = p_message
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

create or replace function public.audio_job_complete(p_id uuid, p_attempt integer, p_result jsonb)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue
       set status = 'completed', result = p_result, error = null, progress = 100, stage = 'UPLOADING',
           message = 'Render complete', finished_at = now(), locked_until = null
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

-- A failed attempt. Permanent: failed now. Transient: back to pending after an exponential backoff
-- (p_backoff_base_seconds * 2^(attempts-1), capped), unless max_attempts is used up. Returns the new status,
-- or null when the fence did not match (already finished, or claimed again).
create or replace function public.audio_job_fail(p_id uuid, p_attempt integer, p_error text, p_permanent boolean,
                                                 p_result jsonb default null,
                                                 p_backoff_base_seconds double precision default 10,
                                                 p_backoff_max_seconds double precision default 600)
returns text
language sql volatile
as $$
  update public.audio_job_queue
     set status = case when p_permanent or attempts >= max_attempts then 'failed' else 'pending' end,
         error = p_error,
         result = case when p_permanent or attempts >= max_attempts then p_result else null end,
         message = p_error,
         available_at = case when p_permanent or attempts >= max_attempts then available_at
                             else now() + make_interval(secs => least(p_backoff_max_seconds,
                                            p_backoff_base_seconds * power(2, greatest(attempts - 1, 0)))) end,
         finished_at = case when p_permanent or attempts >= max_attempts then now() else null end,
         locked_until = null, worker_id = case when p_permanent or attempts >= max_attempts
                                               then worker_id else null end
   where id = p_id and attempts = p_attempt and status = 'processing'
  returning status
$$;

create or replace function public.audio_job_cancel(p_id uuid, p_attempt integer, p_message text)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue
       set status = 'cancelled', message = p_message, error = p_message, finished_at = now(), locked_until = null
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

-- Give a claimed job back without spending an attempt (graceful shutdown: not the job's fault). The attempt
-- number still advances (so each claim's flow run has its own idempotency key); max_attempts grows by one.
create or replace function public.audio_job_release(p_id uuid, p_attempt integer, p_message text)
returns boolean
language sql volatile
as $$
  with done as (
    update public.audio_job_queue
       set status = 'pending', max_attempts = max_attempts + 1, available_at = now(), worker_id = null,
           flow_run_id = null, locked_until = null, started_at = null, progress = 0, stage = null,
           message = p_message
     where id = p_id and attempts = p_attempt and status = 'processing'
    returning 1
  )
  select exists (select 1 from done)
$$;

-- Rows whose lease ran out (the worker died or hung): back to pending with backoff, or failed when their
-- attempts are used up. Returns the rows as they are now.
create or replace function public.audio_job_requeue_expired(p_backoff_base_seconds double precision default 10,
                                                            p_backoff_max_seconds double precision default 600)
returns setof public.audio_job_queue
language sql volatile
as $$
  with expired as (
    select id from public.audio_job_queue
     where status = 'processing' and locked_until < now()
     for update skip locked
  )
  update public.audio_job_queue q
     set status = case when q.attempts >= q.max_attempts then 'failed' else 'pending' end,
         error = 'lease expired on worker ' || coalesce(q.worker_id, '?') || ' (attempt ' || q.attempts || ')',
         message = 'lease expired on worker ' || coalesce(q.worker_id, '?') || ' (attempt ' || q.attempts || ')',
         available_at = case when q.attempts >= q.max_attempts then q.available_at
                             else now() + make_interval(secs => least(p_backoff_max_seconds,
                                            p_backoff_base_seconds * power(2, greatest(q.attempts - 1, 0)))) end,
         finished_at = case when q.attempts >= q.max_attempts then now() else null end,
         locked_until = null
    from expired
   where q.id = expired.id
  returning q.*
$$;

-- Rows being processed (optionally by one worker), for reconciliation with the orchestrator's state.
create or replace function public.audio_job_active(p_worker_id text default null)
returns setof public.audio_job_queue
language sql stable
as $$
  select * from public.audio_job_queue
   where status = 'processing' and (p_worker_id is null or worker_id = p_worker_id)
   order by started_at
$$;

create or replace function public.audio_job_get(p_id uuid)
returns setof public.audio_job_queue
language sql stable
as $$
  select * from public.audio_job_queue where id = p_id
$$;

-- Insert a job as the service (tests, tools); the app inserts into the table directly.
create or replace function public.audio_job_enqueue(p_payload jsonb, p_priority integer default 0,
                                                    p_user_id uuid default null, p_max_attempts integer default 3,
                                                    p_delay_seconds double precision default 0)
returns setof public.audio_job_queue
language sql volatile
as $$
  insert into public.audio_job_queue (payload, priority, user_id, max_attempts, available_at)
  values (p_payload, p_priority, p_user_id, p_max_attempts, now() + make_interval(secs => p_delay_seconds))
  returning *
$$;

create or replace function public.audio_job_stats()
returns jsonb
language sql stable
as $$
  select jsonb_build_object(
    'total', count(*),
    'pending', count(*) filter (where status = 'pending'),
    'processing', count(*) filter (where status = 'processing'),
    'completed', count(*) filter (where status = 'completed'),
    'failed', count(*) filter (where status = 'failed'),
    'cancelled', count(*) filter (where status = 'cancelled'),
    'successRate', case when count(*) filter (where status in ('completed', 'failed')) = 0 then null
                        else round((count(*) filter (where status = 'completed'))::numeric
                                   / count(*) filter (where status in ('completed', 'failed')), 4) end,
    'avgProcessingSeconds', round(avg(extract(epoch from finished_at - started_at))
                                  filter (where status = 'completed')::numeric, 3),
    'oldestPendingSeconds', round(extract(epoch from now() - min(created_at)
                                  filter (where status = 'pending'))::numeric, 3)
  )
  from public.audio_job_queue
$$;

-- Only the service role runs these. Postgres grants EXECUTE to PUBLIC and Supabase to anon/authenticated
-- by default: take both away.
do $$
declare
  fn regprocedure;
begin
  for fn in
    select p.oid::regprocedure from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'public' and p.proname like 'audio\_job\_%'
  loop
    execute format('revoke all on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
end
$$;
