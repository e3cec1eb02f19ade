-- quotaflow: reports over the usage log, in USD and in an organization's display currency.
--
-- Every report is a security-invoker function: RLS on api_usage_logs decides what a caller
-- sees, and a caller who is not a member of the organization gets 42501 (as check_quota does).
-- Ranges are half-open [start_at, end_at) on api_usage_logs.occurred_at and default to the last
-- 30 days; days are calendar days in the organization's time zone. Each report reads the logs
-- through one index range scan on (organization_id, occurred_at) per currency-rate period (one
-- period unless the rate changed inside the range), with no per-row function calls.
-- usage_summary, usage_by_day, usage_by_dimension and model_performance take an optional
-- user_id (default null: every call) to report one app user's calls (the HTTP user report).
--
-- Columns are fixed (they are the reports' API) and amounts are numeric, never floats:
--   cost_usd      what the calls cost in USD (api_usage_logs.cost_usd, priced in SQL)
--   credits       the credits charged (api_usage_logs.credits)
--   cost_display  cost in the organization's display currency at the rate in force when each
--                 call was made (currency_rates); null when some cost has no rate. USD when the
--                 organization has no display currency.
--
-- Ready-to-run copies of these reports live in sql/queries/.

-- =====================================================================
-- currency_rates
-- =====================================================================
create table public.currency_rates (
  currency text not null check (currency ~ '^[A-Z]{3}$'),
  usd_rate numeric not null check (usd_rate > 0),
  effective_from timestamptz not null check (isfinite(effective_from)),
  source text check (length(source) <= 500),
  created_at timestamptz not null default now(),
  primary key (currency, effective_from)
);
comment on table public.currency_rates is
  'Exchange rates for reports: a rate applies from effective_from until the next row of the same currency.';
comment on column public.currency_rates.currency is 'ISO 4217 code, as organizations.display_currency (BRL, EUR, ...).';
comment on column public.currency_rates.usd_rate is
  'Units of the currency that one US dollar buys (BRL: about 5.4); cost_display = cost_usd * usd_rate.';
comment on column public.currency_rates.effective_from is
  'From when the rate applies; calls made before a currency''s first rate have no display cost.';

alter table public.currency_rates enable row level security;

create policy "signed-in users read exchange rates" on public.currency_rates
  for select to authenticated
  using (true);

-- Rates are reference data maintained by the service (a scheduled job or `insert` by hand):
--   insert into public.currency_rates (currency, usd_rate, effective_from, source)
--   values ('BRL', 5.40, '2026-11-01T00:00:00Z', 'manual');
revoke all on public.currency_rates from anon, authenticated;
grant select on public.currency_rates to authenticated;
grant all on public.currency_rates to service_role;

-- =====================================================================
-- Reading the usage log at scale
-- =====================================================================

-- The organizations the signed-in user belongs to. Security definer: it reads
-- organization_members, whose own policies call has_org_role.
create or replace function private.member_organization_ids()
returns uuid[]
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(array_agg(m.organization_id), '{}'::uuid[])
  from public.organization_members m
  where m.user_id = (select auth.uid());
$$;
revoke execute on function private.member_organization_ids() from public;
grant execute on function private.member_organization_ids() to authenticated, service_role;

-- Reports read hundreds of thousands of log rows as the signed-in user. The usage migration's
-- policy, (select private.has_org_role(organization_id)), is a subquery correlated with the row,
-- so it runs once per row (about 6 us each: 2.7 s for 400k rows). Comparing with the member's
-- organization ids, computed once per statement (an initPlan), is the same rule at no per-row
-- cost, and the ids become an index condition.
alter policy "members read their organization's usage" on public.api_usage_logs
  using (organization_id = any ((select private.member_organization_ids())::uuid[]));

-- Covering index: the same keys as api_usage_logs_org_occurred_idx plus every column the
-- totals sum and the optional user filter reads (PL/pgSQL's cached generic plan keeps the
-- `uid is null or user_id = uid` test), so usage_summary is an index-only range scan (about 0.1 s for 400k rows in the
-- range). It serves every query the plain index served, which it therefore replaces.
create index api_usage_logs_org_occurred_covering_idx
  on public.api_usage_logs (organization_id, occurred_at desc)
  include (success, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
           reasoning_tokens, cost_usd, credits, latency_ms, user_id);
drop index public.api_usage_logs_org_occurred_idx;

-- Index-only scans skip the heap only for pages the visibility map marks all-visible: vacuum
-- the append-only log after every 1% of new rows (default 20%) so recent days stay covered.
alter table public.api_usage_logs set (autovacuum_vacuum_insert_scale_factor = 0.01);

-- =====================================================================
-- Shared pieces of the reports (private)
-- =====================================================================

-- Validates a report's organization (private.assert_member) and range.
create or replace function private.assert_report_args(org uuid, start_at timestamptz, end_at timestamptz)
returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  perform private.assert_member(org);
  if start_at is null or end_at is null or not isfinite(start_at) or not isfinite(end_at) then
    raise exception 'report range must have a finite start and end' using errcode = '22023';
  end if;
  if end_at < start_at then
    raise exception 'report range ends (%) before it starts (%)', end_at, start_at
      using errcode = '22023';
  end if;
end;
$$;
revoke execute on function private.assert_report_args(uuid, timestamptz, timestamptz) from public;
grant execute on function private.assert_report_args(uuid, timestamptz, timestamptz) to authenticated, service_role;

-- The organization's display currency over [start_at, end_at), cut into periods of constant
-- rate: (currency, period_start, period_end, rate). The periods cover the whole range; rate is
-- null before the currency's first rate. USD (or no display currency) is one period at rate 1.
-- No rows for an organization the caller cannot see. Reports join each period to an index
-- range scan of the logs, so the rate is applied per period, not looked up per row.
create or replace function private.display_rate_periods(org uuid, start_at timestamptz, end_at timestamptz)
returns table (currency text, period_start timestamptz, period_end timestamptz, rate numeric)
language sql
stable
rows 2
set search_path = ''
as $$
  with org_currency as (
    select coalesce(o.display_currency, 'USD') as currency
    from public.organizations o
    where o.id = org
  ),
  changes as (
    select c.currency, '-infinity'::timestamptz as effective_from,
           case when c.currency = 'USD' then 1::numeric end as rate
    from org_currency c
    union all
    select c.currency, r.effective_from, r.usd_rate
    from org_currency c
    join public.currency_rates r on r.currency = c.currency
    where c.currency <> 'USD'
  ),
  periods as (
    select ch.currency, ch.effective_from,
           lead(ch.effective_from, 1, 'infinity'::timestamptz) over (order by ch.effective_from) as effective_to,
           ch.rate
    from changes ch
  )
  select p.currency, greatest(p.effective_from, start_at), least(p.effective_to, end_at), p.rate
  from periods p
  where p.effective_from < end_at and p.effective_to > start_at
     or start_at = end_at and p.effective_from <= start_at and p.effective_to > start_at
  order by 2;
$$;
revoke execute on function private.display_rate_periods(uuid, timestamptz, timestamptz) from public;
grant execute on function private.display_rate_periods(uuid, timestamptz, timestamptz) to authenticated, service_role;

-- =====================================================================
-- usage_summary
-- =====================================================================

-- The organization's totals over a range (default: the last 30 days), in one row: the query
-- behind a dashboard's headline figures. Aggregates each rate period in one index range scan
-- and converts the period's sum, so the cost of the report is the cost of the scan.
--   select * from usage_summary('<org-id>');
create or replace function public.usage_summary(
  organization_id uuid,
  start_at timestamptz default now() - interval '30 days',
  end_at timestamptz default now(),
  user_id text default null
)
returns table (
  period_start timestamptz,
  period_end timestamptz,
  requests bigint,
  successful_requests bigint,
  failed_requests bigint,
  input_tokens bigint,
  output_tokens bigint,
  cached_input_tokens bigint,
  cache_write_tokens bigint,
  reasoning_tokens bigint,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  display_currency text,
  cost_display numeric,
  avg_cost_usd numeric,
  avg_latency_ms numeric
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := usage_summary.organization_id;
  lo timestamptz := usage_summary.start_at;
  hi timestamptz := usage_summary.end_at;
  uid text := usage_summary.user_id;
begin
  perform private.assert_report_args(org, lo, hi);
  return query
    select lo, hi,
           coalesce(sum(x.n), 0)::bigint,
           coalesce(sum(x.ok), 0)::bigint,
           coalesce(sum(x.n - x.ok), 0)::bigint,
           coalesce(sum(x.input_tokens), 0)::bigint,
           coalesce(sum(x.output_tokens), 0)::bigint,
           coalesce(sum(x.cached_input_tokens), 0)::bigint,
           coalesce(sum(x.cache_write_tokens), 0)::bigint,
           coalesce(sum(x.reasoning_tokens), 0)::bigint,
           coalesce(sum(x.input_tokens + x.output_tokens), 0)::bigint,
           coalesce(sum(x.cost_usd), 0),
           coalesce(sum(x.credits), 0),
           min(p.currency),
           case when bool_and(p.rate is not null or x.cost_usd = 0)
                then coalesce(sum(x.cost_usd * p.rate), 0) end,
           case when sum(x.n) > 0 then sum(x.cost_usd) / sum(x.n) end,
           case when sum(x.latency_n) > 0 then round(sum(x.latency_sum) / sum(x.latency_n), 1) end
    from private.display_rate_periods(org, lo, hi) p
    cross join lateral (
      select count(*) as n,
             count(*) filter (where l.success) as ok,
             coalesce(sum(l.input_tokens), 0) as input_tokens,
             coalesce(sum(l.output_tokens), 0) as output_tokens,
             coalesce(sum(l.cached_input_tokens), 0) as cached_input_tokens,
             coalesce(sum(l.cache_write_tokens), 0) as cache_write_tokens,
             coalesce(sum(l.reasoning_tokens), 0) as reasoning_tokens,
             coalesce(sum(l.cost_usd), 0) as cost_usd,
             coalesce(sum(l.credits), 0) as credits,
             sum(l.latency_ms) as latency_sum,
             count(l.latency_ms) as latency_n
      from public.api_usage_logs l
      where l.organization_id = org
        and l.occurred_at >= p.period_start and l.occurred_at < p.period_end
        and (uid is null or l.user_id = uid)
    ) x;
end;
$$;
comment on function public.usage_summary(uuid, timestamptz, timestamptz, text) is
  'One row of totals over [start_at, end_at) (default last 30 days), optionally of one user_id: requests, tokens, cost in USD, credits and display currency.';
revoke execute on function public.usage_summary(uuid, timestamptz, timestamptz, text) from public, anon;
grant execute on function public.usage_summary(uuid, timestamptz, timestamptz, text) to authenticated, service_role;

-- =====================================================================
-- usage_by_day
-- =====================================================================

-- One row per calendar day of the range in `time_zone` (default: the organization's), days
-- without calls included with zeros, oldest first: the data of a spend-per-day chart.
create or replace function public.usage_by_day(
  organization_id uuid,
  start_at timestamptz default now() - interval '30 days',
  end_at timestamptz default now(),
  time_zone text default null,
  user_id text default null
)
returns table (
  day date,
  requests bigint,
  successful_requests bigint,
  failed_requests bigint,
  input_tokens bigint,
  output_tokens bigint,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  cost_display numeric,
  avg_latency_ms numeric
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := usage_by_day.organization_id;
  lo timestamptz := usage_by_day.start_at;
  hi timestamptz := usage_by_day.end_at;
  tz text := usage_by_day.time_zone;
  uid text := usage_by_day.user_id;
begin
  perform private.assert_report_args(org, lo, hi);
  if tz is null then
    select o.time_zone into tz from public.organizations o where o.id = org;
  end if;
  perform private.assert_time_zone(coalesce(tz, 'UTC'));
  tz := coalesce(tz, 'UTC');
  return query
    with per_period as (
      select (l.occurred_at at time zone tz)::date as d,
             p.rate,
             count(*) as n,
             count(*) filter (where l.success) as ok,
             sum(l.input_tokens) as input_tokens,
             sum(l.output_tokens) as output_tokens,
             sum(l.cost_usd) as cost_usd,
             sum(l.credits) as credits,
             sum(l.latency_ms) as latency_sum,
             count(l.latency_ms) as latency_n
      from public.api_usage_logs l
      join private.display_rate_periods(org, lo, hi) p
        on l.occurred_at >= p.period_start and l.occurred_at < p.period_end
      where l.organization_id = org and l.occurred_at >= lo and l.occurred_at < hi
        and (uid is null or l.user_id = uid)
      group by 1, 2
    ),
    per_day as (
      select pp.d,
             sum(pp.n) as n, sum(pp.ok) as ok,
             sum(pp.input_tokens) as input_tokens, sum(pp.output_tokens) as output_tokens,
             sum(pp.cost_usd) as cost_usd, sum(pp.credits) as credits,
             case when bool_and(pp.rate is not null or pp.cost_usd = 0)
                  then coalesce(sum(pp.cost_usd * pp.rate), 0) end as cost_display,
             sum(pp.latency_sum) as latency_sum, sum(pp.latency_n) as latency_n
      from per_period pp
      group by pp.d
    ),
    days as (
      select g::date as d
      from generate_series((lo at time zone tz)::date,
                           (greatest(hi - interval '1 microsecond', lo) at time zone tz)::date,
                           interval '1 day') g
    )
    select dd.d,
           coalesce(pd.n, 0)::bigint,
           coalesce(pd.ok, 0)::bigint,
           coalesce(pd.n - pd.ok, 0)::bigint,
           coalesce(pd.input_tokens, 0)::bigint,
           coalesce(pd.output_tokens, 0)::bigint,
           coalesce(pd.input_tokens + pd.output_tokens, 0)::bigint,
           coalesce(pd.cost_usd, 0),
           coalesce(pd.credits, 0),
           case when pd.d is null then 0 else pd.cost_display end,
           case when pd.latency_n > 0 then round(pd.latency_sum / pd.latency_n, 1) end
    from days dd
    left join per_day pd on pd.d = dd.d
    order by dd.d;
end;
$$;
comment on function public.usage_by_day(uuid, timestamptz, timestamptz, text, text) is
  'One row per calendar day of [start_at, end_at) in the time zone (default the organization''s), empty days included.';
revoke execute on function public.usage_by_day(uuid, timestamptz, timestamptz, text, text) from public, anon;
grant execute on function public.usage_by_day(uuid, timestamptz, timestamptz, text, text) to authenticated, service_role;

-- =====================================================================
-- usage_trends
-- =====================================================================

-- The last `days` calendar days (today included, in the organization's time zone) with
-- day-over-day change, a trailing 7-day average and the running total: seed 003's trends.
create or replace function public.usage_trends(organization_id uuid, days integer default 30)
returns table (
  day date,
  requests bigint,
  failed_requests bigint,
  error_rate numeric,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  cost_display numeric,
  cost_usd_change numeric,
  cost_usd_7d_avg numeric,
  cumulative_cost_usd numeric
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := usage_trends.organization_id;
  n integer := usage_trends.days;
  tz text;
  lo timestamptz;
begin
  if n is null or n < 1 or n > 3660 then
    raise exception 'days must be between 1 and 3660 (got %)', n using errcode = '22023';
  end if;
  perform private.assert_report_args(org, now(), now());
  select o.time_zone into tz from public.organizations o where o.id = org;
  tz := coalesce(tz, 'UTC');
  lo := ((now() at time zone tz)::date - (n - 1)) at time zone tz;
  return query
    select d.day, d.requests, d.failed_requests,
           case when d.requests > 0 then round(d.failed_requests::numeric / d.requests, 4) else 0 end,
           d.total_tokens, d.cost_usd, d.credits, d.cost_display,
           d.cost_usd - lag(d.cost_usd) over w,
           round(avg(d.cost_usd) over (w rows between 6 preceding and current row), 6),
           sum(d.cost_usd) over (w rows between unbounded preceding and current row)
    from public.usage_by_day(org, lo, now(), tz) d
    window w as (order by d.day)
    order by d.day;
end;
$$;
comment on function public.usage_trends(uuid, integer) is
  'The last N days (default 30) per day with change from the previous day, 7-day average and running total of cost.';
revoke execute on function public.usage_trends(uuid, integer) from public, anon;
grant execute on function public.usage_trends(uuid, integer) to authenticated, service_role;

-- =====================================================================
-- usage_by_dimension
-- =====================================================================

-- Totals per value of one dimension of the calls: user, provider, model (as called),
-- conversation, session, workflow or tag (seed 003's module). A call with several tags
-- counts under each; calls without a value (no user, no tags) are one row with key null.
-- Most expensive first.
--   select * from usage_by_dimension('<org-id>', 'model');
create or replace function public.usage_by_dimension(
  organization_id uuid,
  dimension text,
  start_at timestamptz default now() - interval '30 days',
  end_at timestamptz default now(),
  user_id text default null
)
returns table (
  key text,
  requests bigint,
  successful_requests bigint,
  failed_requests bigint,
  input_tokens bigint,
  output_tokens bigint,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  cost_display numeric,
  avg_cost_usd numeric,
  avg_latency_ms numeric,
  last_used_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := usage_by_dimension.organization_id;
  dim text := lower(trim(usage_by_dimension.dimension));
  lo timestamptz := usage_by_dimension.start_at;
  hi timestamptz := usage_by_dimension.end_at;
  uid text := usage_by_dimension.user_id;
begin
  if dim is null or dim not in ('user', 'provider', 'model', 'conversation', 'session', 'workflow', 'tag') then
    raise exception 'unknown report dimension: %', usage_by_dimension.dimension using errcode = '22023',
      hint = 'use user, provider, model, conversation, session, workflow or tag';
  end if;
  perform private.assert_report_args(org, lo, hi);
  return query
    with calls as (
      select case dim
               when 'user' then l.user_id
               when 'provider' then l.provider
               when 'model' then l.model
               when 'conversation' then l.conversation_id
               when 'session' then l.session_id
               when 'workflow' then l.workflow_id
             end as k,
             l.success, l.input_tokens, l.output_tokens, l.cost_usd, l.credits, l.latency_ms,
             l.occurred_at, p.rate
      from public.api_usage_logs l
      join private.display_rate_periods(org, lo, hi) p
        on l.occurred_at >= p.period_start and l.occurred_at < p.period_end
      where l.organization_id = org and l.occurred_at >= lo and l.occurred_at < hi
        and (uid is null or l.user_id = uid) and dim <> 'tag'
      union all
      select t.tag, l.success, l.input_tokens, l.output_tokens, l.cost_usd, l.credits, l.latency_ms,
             l.occurred_at, p.rate
      from public.api_usage_logs l
      join private.display_rate_periods(org, lo, hi) p
        on l.occurred_at >= p.period_start and l.occurred_at < p.period_end
      left join lateral unnest(l.tags) as t(tag) on true
      where l.organization_id = org and l.occurred_at >= lo and l.occurred_at < hi
        and (uid is null or l.user_id = uid) and dim = 'tag'
    )
    select c.k,
           count(*),
           count(*) filter (where c.success),
           count(*) filter (where not c.success),
           sum(c.input_tokens)::bigint,
           sum(c.output_tokens)::bigint,
           sum(c.input_tokens + c.output_tokens)::bigint,
           sum(c.cost_usd),
           sum(c.credits),
           case when bool_and(c.rate is not null or c.cost_usd = 0)
                then coalesce(sum(c.cost_usd * c.rate), 0) end,
           sum(c.cost_usd) / count(*),
           round(avg(c.latency_ms), 1),
           max(c.occurred_at)
    from calls c
    group by c.k
    order by 8 desc, 2 desc, 1 nulls last;
end;
$$;
comment on function public.usage_by_dimension(uuid, text, timestamptz, timestamptz, text) is
  'Totals per user, provider, model, conversation, session, workflow or tag over [start_at, end_at), most expensive first.';
revoke execute on function public.usage_by_dimension(uuid, text, timestamptz, timestamptz, text) from public, anon;
grant execute on function public.usage_by_dimension(uuid, text, timestamptz, timestamptz, text) to authenticated, service_role;

-- =====================================================================
-- model_performance
-- =====================================================================

-- Per provider and model (as called): requests, error rate, latency (average, median and
-- 95th percentile over calls that report one) and cost per call: seed 003's model performance.
create or replace function public.model_performance(
  organization_id uuid,
  start_at timestamptz default now() - interval '30 days',
  end_at timestamptz default now(),
  user_id text default null
)
returns table (
  provider text,
  model text,
  requests bigint,
  successful_requests bigint,
  failed_requests bigint,
  error_rate numeric,
  avg_latency_ms numeric,
  p50_latency_ms numeric,
  p95_latency_ms numeric,
  avg_input_tokens numeric,
  avg_output_tokens numeric,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  avg_cost_usd numeric,
  cost_display numeric
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := model_performance.organization_id;
  lo timestamptz := model_performance.start_at;
  hi timestamptz := model_performance.end_at;
  uid text := model_performance.user_id;
begin
  perform private.assert_report_args(org, lo, hi);
  return query
    select l.provider, l.model,
           count(*),
           count(*) filter (where l.success),
           count(*) filter (where not l.success),
           round(count(*) filter (where not l.success)::numeric / count(*), 4),
           round(avg(l.latency_ms), 1),
           round((percentile_cont(0.5) within group (order by l.latency_ms))::numeric, 1),
           round((percentile_cont(0.95) within group (order by l.latency_ms))::numeric, 1),
           round(avg(l.input_tokens), 1),
           round(avg(l.output_tokens), 1),
           sum(l.input_tokens + l.output_tokens)::bigint,
           sum(l.cost_usd),
           sum(l.credits),
           sum(l.cost_usd) / count(*),
           case when bool_and(p.rate is not null or l.cost_usd = 0)
                then coalesce(sum(l.cost_usd * p.rate), 0) end
    from public.api_usage_logs l
    join private.display_rate_periods(org, lo, hi) p
      on l.occurred_at >= p.period_start and l.occurred_at < p.period_end
    where l.organization_id = org and l.occurred_at >= lo and l.occurred_at < hi
      and (uid is null or l.user_id = uid)
    group by l.provider, l.model
    order by 3 desc, 1, 2;
end;
$$;
comment on function public.model_performance(uuid, timestamptz, timestamptz, text) is
  'Per provider and model: requests, error rate, average/p50/p95 latency (ms), tokens, cost, credits and cost per call.';
revoke execute on function public.model_performance(uuid, timestamptz, timestamptz, text) from public, anon;
grant execute on function public.model_performance(uuid, timestamptz, timestamptz, text) to authenticated, service_role;

-- =====================================================================
-- top_users
-- =====================================================================

-- The app users who spent most over the range, with their share of the organization's cost
-- (calls without a user_id count in the total but are not ranked). Ties rank equal.
create or replace function public.top_users(
  organization_id uuid,
  start_at timestamptz default now() - interval '30 days',
  end_at timestamptz default now(),
  max_rows integer default 10
)
returns table (
  rank bigint,
  user_id text,
  requests bigint,
  failed_requests bigint,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  cost_display numeric,
  cost_share numeric,
  last_used_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := top_users.organization_id;
  lo timestamptz := top_users.start_at;
  hi timestamptz := top_users.end_at;
begin
  if max_rows is null or max_rows < 1 then
    raise exception 'max_rows must be at least 1 (got %)', max_rows using errcode = '22023';
  end if;
  perform private.assert_report_args(org, lo, hi);
  return query
    with per_user as (
      select d.key as uid, d.requests, d.failed_requests, d.total_tokens, d.cost_usd, d.credits,
             d.cost_display, d.last_used_at,
             sum(d.cost_usd) over () as org_cost
      from public.usage_by_dimension(org, 'user', lo, hi) d
    )
    select rank() over (order by u.cost_usd desc, u.requests desc),
           u.uid, u.requests, u.failed_requests, u.total_tokens, u.cost_usd, u.credits,
           u.cost_display,
           case when u.org_cost > 0 then round(u.cost_usd / u.org_cost, 4) else 0 end,
           u.last_used_at
    from per_user u
    where u.uid is not null
    order by 1, u.uid
    limit max_rows;
end;
$$;
comment on function public.top_users(uuid, timestamptz, timestamptz, integer) is
  'The max_rows app users with the highest cost over [start_at, end_at), with their share of the organization''s cost.';
revoke execute on function public.top_users(uuid, timestamptz, timestamptz, integer) from public, anon;
grant execute on function public.top_users(uuid, timestamptz, timestamptz, integer) to authenticated, service_role;

-- =====================================================================
-- usage_by_organization
-- =====================================================================

-- Totals per organization the caller can see (members: theirs; the service role: all), most
-- expensive first: the operator's view across tenants.
create or replace function public.usage_by_organization(
  start_at timestamptz default now() - interval '30 days',
  end_at timestamptz default now()
)
returns table (
  organization_id uuid,
  name text,
  requests bigint,
  failed_requests bigint,
  total_tokens bigint,
  cost_usd numeric,
  credits numeric,
  display_currency text,
  cost_display numeric
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  lo timestamptz := usage_by_organization.start_at;
  hi timestamptz := usage_by_organization.end_at;
begin
  if lo is null or hi is null or not isfinite(lo) or not isfinite(hi) or hi < lo then
    raise exception 'report range must have a finite start and an end not before it' using errcode = '22023';
  end if;
  return query
    select o.id, o.name, s.requests, s.failed_requests, s.total_tokens, s.cost_usd, s.credits,
           s.display_currency, s.cost_display
    from public.organizations o
    cross join lateral public.usage_summary(o.id, lo, hi) s
    order by s.cost_usd desc, s.requests desc, o.name, o.id;
end;
$$;
comment on function public.usage_by_organization(timestamptz, timestamptz) is
  'Totals per organization visible to the caller over [start_at, end_at), most expensive first.';
revoke execute on function public.usage_by_organization(timestamptz, timestamptz) from public, anon;
grant execute on function public.usage_by_organization(timestamptz, timestamptz) to authenticated, service_role;
