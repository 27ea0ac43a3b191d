-- A row that goes back to pending (a failed attempt with attempts left, or an expired lease) starts over: its
-- progress and stage are reset, as a release already did. Before, a pending row kept showing the stage and
-- percentage its last attempt reached (e.g. "MIXING_AUDIO 60 %") until the next claim. A row that fails for
-- good keeps both: they tell where it failed. Same signatures, attributes and grants as after
-- 20250615000000_audio_job_functions_hardening.sql.
create or replace function public.audio_job_fail(p_id uuid, p_attempt integer, p_error text, p_permanent boolean,
                                                 p_result jsonb default null,
                                                 p_backoff_base_seconds double precision default 10,
                                                 p_backoff_max_seconds double precision default 600)
returns text
language sql volatile
security invoker
set search_path = ''
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
         progress = case when p_permanent or attempts >= max_attempts then progress else 0 end,
         stage = case when p_permanent or attempts >= max_attempts then stage else null end,
         locked_until = null, worker_id = case when p_permanent or attempts >= max_attempts
                                               then worker_id else null end
   where id = p_id and attempts = p_attempt and status = 'processing'
  returning status
$$;

create or replace function public.audio_job_requeue_expired(p_backoff_base_seconds double precision default 10,
                                                            p_backoff_max_seconds double precision default 600)
returns setof public.audio_job_queue
language sql volatile
security invoker
set search_path = ''
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
         progress = case when q.attempts >= q.max_attempts then q.progress else 0 end,
         stage = case when q.attempts >= q.max_attempts then q.stage else null end,
         locked_until = null
    from expired
   where q.id = expired.id
  returning q.*
$$;

revoke all on function public.audio_job_fail(uuid, integer, text, boolean, jsonb, double precision, double precision)
  from public, anon, authenticated;
grant execute on function public.audio_job_fail(uuid, integer, text, boolean, jsonb, double precision, double precision)
  to service_role;
revoke all on function public.audio_job_requeue_expired(double precision, double precision)
  from public, anon, authenticated;
grant execute on function public.audio_job_requeue_expired(double precision, double precision) to service_role;
