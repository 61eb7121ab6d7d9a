-- The public names of DESIGN.md, checked with pgTAP: functions with their
-- parameter names (callable in named notation), views with their columns,
-- job states, roles.
-- each suite gets a database of its own
CREATE DATABASE atomizer_contract;
\c atomizer_contract
CREATE EXTENSION atomizer;
CREATE EXTENSION pgtap;
\set QUIET on
\pset format unaligned
\pset tuples_only on

CREATE FUNCTION argnames(fn regprocedure) RETURNS text[] LANGUAGE sql AS $$
	SELECT proargnames::text[] FROM pg_proc WHERE oid = fn
$$;

SELECT plan(60);

SELECT is(argnames('atomizer.enqueue(text,jsonb,text,timestamptz,int,int,interval,text,interval,text[],bigint[],text)'),
	ARRAY['handler','payload','queue','run_at','priority','max_attempts','timeout','idempotency_key','unique_for','tags',
		  'depends_on','on_dependency_failure'],
	'enqueue parameters');
SELECT function_returns('atomizer', 'enqueue',
	ARRAY['text','jsonb','text','timestamp with time zone','integer','integer','interval','text','interval','text[]','bigint[]','text'],
	'bigint', 'enqueue returns bigint');
SELECT is(argnames('atomizer.enqueue_many(text,jsonb[],text,timestamptz,int,int,interval,text[],text[],bigint[],text)'),
	ARRAY['handler','payloads','queue','run_at','priority','max_attempts','timeout','idempotency_keys','tags',
		  'depends_on','on_dependency_failure'],
	'enqueue_many parameters');
SELECT function_returns('atomizer', 'enqueue_many',
	ARRAY['text','jsonb[]','text','timestamp with time zone','integer','integer','interval','text[]','text[]','bigint[]','text'],
	'setof bigint', 'enqueue_many returns setof bigint');
SELECT is(argnames('atomizer.cancel(bigint)'), ARRAY['job_id'], 'cancel parameters');
SELECT function_returns('atomizer', 'cancel', ARRAY['bigint'], 'boolean', 'cancel returns boolean');
SELECT is(argnames('atomizer.retry(bigint)'), ARRAY['job_id'], 'retry parameters');
SELECT function_returns('atomizer', 'retry', ARRAY['bigint'], 'boolean', 'retry returns boolean');
SELECT is(argnames('atomizer.purge(interval,text)'), ARRAY['older_than','queue'], 'purge parameters');
SELECT function_returns('atomizer', 'purge', ARRAY['interval','text'], 'bigint', 'purge returns bigint');
SELECT is(argnames('atomizer.run_pending(text,int)'), ARRAY['queue','max_jobs'], 'run_pending parameters');
SELECT function_returns('atomizer', 'run_pending', ARRAY['text','integer'], 'integer', 'run_pending returns integer');
SELECT is((argnames('atomizer.create_queue(text,int,boolean,int,interval,interval,float8,interval,interval,int,interval,text,text,text,text,text)'))[1:3],
	ARRAY['name','concurrency','external'], 'create_queue starts with name, concurrency, external');
SELECT is(argnames('atomizer.create_queue(text,int,boolean,int,interval,interval,float8,interval,interval,int,interval,text,text,text,text,text)'),
	argnames('atomizer.alter_queue(text,int,boolean,int,interval,interval,float8,interval,interval,int,interval,text,text,text,text,text)'),
	'create_queue and alter_queue take the same named settings');
SELECT is((argnames('atomizer.drop_queue(text,boolean)'))[1], 'name', 'drop_queue(name)');
SELECT is(argnames('atomizer.pause_queue(text)'), ARRAY['name'], 'pause_queue(name)');
SELECT is(argnames('atomizer.resume_queue(text)'), ARRAY['name'], 'resume_queue(name)');
SELECT is((argnames('atomizer.create_queue(text,int,boolean,int,interval,interval,float8,interval,interval,int,interval,text,text,text,text,text)'))[10:16],
	ARRAY['rate_limit','rate_period','rate_partition','before_run','on_success','on_failure','on_dead'],
	'create_queue: rate limit and hook settings');
SELECT is(argnames('atomizer.limit_handler(text,text,int)'), ARRAY['queue','handler','concurrency'],
	'limit_handler(queue, handler, concurrency)');

-- named notation, defaults
SELECT lives_ok($$SELECT atomizer.enqueue(handler => 'pg_catalog.jsonb_typeof')$$, 'enqueue with only a handler');
SELECT lives_ok($$SELECT atomizer.enqueue_many(payloads => ARRAY['{}']::jsonb[], handler => 'pg_catalog.jsonb_typeof')$$,
	'enqueue_many in named notation, any order');
SELECT lives_ok($$SELECT atomizer.create_queue(name => 'q', concurrency => 2, external => false)$$, 'create_queue named');
SELECT lives_ok($$SELECT atomizer.alter_queue(name => 'q', concurrency => 3)$$, 'alter_queue named');
SELECT lives_ok($$SELECT atomizer.pause_queue(name => 'q')$$, 'pause_queue named');
SELECT lives_ok($$SELECT atomizer.resume_queue(name => 'q')$$, 'resume_queue named');
SELECT lives_ok($$SELECT atomizer.drop_queue(name => 'q')$$, 'drop_queue named');
SELECT is(atomizer.run_pending(queue => 'default', max_jobs => 1), 1, 'run_pending named');
SELECT is(atomizer.purge(older_than => '1 day', queue => 'default'), 0::bigint, 'purge named');
SELECT is(atomizer.cancel(job_id => 2), true, 'cancel named');
SELECT is(atomizer.retry(job_id => 2), true, 'retry named');

-- views
SELECT has_view('atomizer', 'jobs', 'view jobs');
SELECT columns_are('atomizer', 'jobs', ARRAY['id','queue','handler','payload','state','priority',
	'run_at','attempt','max_attempts','timeout','owner','idempotency_key','created_at',
	'started_at','finished_at','result','last_error','worker','lease_until','tags',
	'depends_on','blockers'], 'jobs columns');
SELECT has_view('atomizer', 'dead_jobs', 'view dead_jobs');
SELECT has_view('atomizer', 'queue_stats', 'view queue_stats');
SELECT columns_are('atomizer', 'queue_stats', ARRAY['queue','paused','external','concurrency',
	'scheduled','available','running','retrying','succeeded','cancelled','dead',
	'oldest_available','blocked'], 'queue_stats: a count column per state');
SELECT has_view('atomizer', 'job_dependencies', 'view job_dependencies');
SELECT columns_are('atomizer', 'job_dependencies', ARRAY['job_id','depends_on','state'],
	'job_dependencies columns');
SELECT has_function('atomizer', 'dependencies', ARRAY[]::text[], 'dependencies()');
SELECT has_function('atomizer', 'dependencies', ARRAY['bigint'], 'dependencies(job_id)');
SELECT has_view('atomizer', 'job_errors', 'view job_errors');
SELECT results_eq($$SELECT queue FROM atomizer.queue_stats$$, ARRAY['default'],
	'queue default exists from the start, one row per queue');

-- states and roles
SELECT is((SELECT state FROM atomizer.jobs WHERE id = 1), 'succeeded', 'state succeeded');
SELECT is((SELECT state FROM atomizer.jobs WHERE id = 2), 'available', 'state available');
SELECT has_role('atomizer_admin', 'role atomizer_admin exists');
SELECT ok(NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'atomizer_admin'), 'atomizer_admin cannot log in');
SELECT is((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_extension e,
		unnest(e.extconfig) cfg JOIN pg_class c ON c.oid = cfg WHERE e.extname = 'atomizer'),
	ARRAY['handler_limit','job','job_dependency','job_error','job_history','job_id_seq','job_unique','queue','schedule','schedule_id_seq'],
	'pg_dump keeps the job store and the schedules');

-- cron
SELECT is((argnames('atomizer.schedule(text,text,text,jsonb,text,text,boolean,text,text,int,int,interval)'))[1:6],
	ARRAY['name','spec','handler','payload','queue','tz'], 'schedule parameters');
SELECT function_returns('atomizer', 'schedule',
	ARRAY['text','text','text','jsonb','text','text','boolean','text','text','integer','integer','interval'],
	'bigint', 'schedule returns bigint');
SELECT is(argnames('atomizer.unschedule(text)'), ARRAY['name'], 'unschedule(name)');
SELECT function_returns('atomizer', 'unschedule', ARRAY['text'], 'boolean', 'unschedule returns boolean');
SELECT is(argnames('atomizer.cron_next(text,timestamptz,text)'), ARRAY['expr','after','tz'], 'cron_next parameters');
SELECT is(atomizer.cron_next(expr => '0 12 * * *', after => '2030-06-01 00:00+00', tz => 'UTC'),
	'2030-06-01 12:00+00'::timestamptz, 'cron_next in named notation');
SELECT has_view('atomizer', 'schedules', 'view schedules');

-- external workers
SELECT is(argnames('atomizer.claim(text,int,interval,text,bigint[],jsonb[],int[])'),
	ARRAY['queue','max_jobs','lease','worker','completed','results','completed_attempts','id','handler','payload','attempt','lease_until'],
	'claim parameters and columns');
SELECT is((argnames('atomizer.complete(bigint,jsonb,int)'))[1:2], ARRAY['job_id','result'], 'complete parameters');
SELECT is(argnames('atomizer.complete_many(bigint[],jsonb[],int[])'), ARRAY['job_ids','results','attempts'], 'complete_many parameters');
SELECT is((argnames('atomizer.fail(bigint,text,interval,int,boolean)'))[1:3], ARRAY['job_id','error','retry_in'], 'fail parameters');
SELECT is((argnames('atomizer.heartbeat(bigint,interval,int)'))[1:2], ARRAY['job_id','lease'], 'heartbeat parameters');
SELECT has_role('atomizer_worker', 'role atomizer_worker exists');
-- (every role may call claim(); it refuses, with SQLSTATE 42501 and a hint
-- naming atomizer_worker, roles that are not members: test/sql/external.sql)
SELECT ok(has_function_privilege('atomizer_worker', 'atomizer.claim(text,int,interval,text,bigint[],jsonb[],int[])', 'EXECUTE'),
	'atomizer_worker (and admins) may claim');

SELECT * FROM finish();
