-- Harden the queue's service functions (issue 7, queue security).
--
-- They stay SECURITY INVOKER: they run with the caller's rights, so only a role that may update
-- public.audio_job_queue (the service role) can do anything with them, and RLS applies to anyone else.
-- A SECURITY DEFINER function would run as its owner and bypass RLS for every role allowed to EXECUTE it.
--
-- Each gets a fixed, empty search_path (Supabase's database linter: function_search_path_mutable). Every
-- object they use is schema-qualified (public.audio_job_queue) or lives in pg_catalog, which is always
-- searched first; with a mutable search_path a caller could put its own objects ahead of the intended ones.
--
-- EXECUTE again belongs to the service role only. The first migration revoked it from PUBLIC, anon and
-- authenticated; this repeats it for every audio_job_* function present now, so a function added since
-- cannot stay callable through PostgREST by an app user (tests/integration/test_queue_grants.py checks all).
do $$
declare
  fn regprocedure;
begin
  for fn in
    select p.oid::regprocedure from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'public' and p.proname like 'audio\_job\_%'
  loop
    execute format('alter function %s security invoker set search_path = %L', fn, '');
    execute format('revoke all on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
end
$$;
