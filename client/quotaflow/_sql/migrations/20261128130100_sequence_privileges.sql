-- quotaflow: the API roles cannot touch sequences.
--
-- Supabase's default privileges grant anon and authenticated SELECT, UPDATE and USAGE on every
-- new sequence in public. With UPDATE, `select setval('public.quota_alerts_id_seq', <max>)`
-- inside a rolled-back transaction (setval is never undone) exhausts the sequence, and the next
-- settle of *another* organization fails; with SELECT, last_value counts every tenant's rows.
-- quotaflow's sequences back identity columns, which need no privilege on the sequence to
-- insert, so the API roles need none at all.

-- =====================================================================
-- Existing sequences and those created later
-- =====================================================================
revoke all on sequence public.cost_estimates_id_seq, public.quota_periods_id_seq,
  public.quota_alerts_id_seq from anon, authenticated;

-- For sequences the migrating role (postgres) creates in public from now on, quotaflow's and
-- the app's alike: a serial column that API roles insert into then needs an explicit grant
-- (identity columns do not).
alter default privileges in schema public revoke all on sequences from anon, authenticated;
