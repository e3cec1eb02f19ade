-- quotaflow: bounded work per report call.
--
-- A report over 1970..2999 read every row of an organization and returned one row per day of
-- ten centuries. Through the API roles (PostgREST, supabase-py rpc) a report now covers at most
-- 400 days (22023 past it); the HTTP functions, which run the reports as the service, enforce
-- the same limit themselves (plus 2,000 days per bulk request and a statement timeout).

-- =====================================================================
-- Shared pieces of the reports (private)
-- =====================================================================

-- Validates a report's organization (private.assert_member) and range; for the API roles the
-- range is at most 400 days.
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
  if current_user in ('anon', 'authenticated') and end_at - start_at > interval '400 days' then
    raise exception 'report range is longer than 400 days, the limit per call: narrow it'
      using errcode = '22023',
            detail = pg_catalog.json_build_object('field', 'start_at', 'limit_days', 400)::text;
  end if;
end;
$$;
revoke execute on function private.assert_report_args(uuid, timestamptz, timestamptz) from public;
grant execute on function private.assert_report_args(uuid, timestamptz, timestamptz) to authenticated, service_role;

-- =====================================================================
-- usage_aggregate
-- =====================================================================

-- Totals of the matching calls over [start_at, end_at) (null: unbounded) and, with group_by
-- (provider, model, user, conversation, session, workflow, or date: the organization's local
-- day as YYYY-MM-DD), one row per value. The total row has is_total true and key null; a group
-- of calls without that value has key null. Groups come most expensive first, dates oldest
-- first. Security invoker: RLS decides what the caller sees; non-members get 42501. The API
-- roles (anon, authenticated) must give a finite range of at most 400 days.
--   select * from usage_aggregate('<org-id>', group_by => 'model', success => true);
create or replace function public.usage_aggregate(
  organization_id uuid,
  start_at timestamptz default null,
  end_at timestamptz default null,
  group_by text default null,
  user_id text default null,
  provider text default null,
  model text default null,
  conversation_id text default null,
  session_id text default null,
  workflow_id text default null,
  success boolean default null,
  tags text[] default null
)
returns table (
  key text,
  is_total boolean,
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
  cost_display numeric,
  avg_cost_usd numeric,
  avg_latency_ms numeric,
  first_at timestamptz,
  last_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := usage_aggregate.organization_id;
  lo timestamptz := coalesce(usage_aggregate.start_at, '-infinity');
  hi timestamptz := coalesce(usage_aggregate.end_at, 'infinity');
  dim text := lower(trim(usage_aggregate.group_by));
  uid text := usage_aggregate.user_id;
  prov text := usage_aggregate.provider;
  mdl text := usage_aggregate.model;
  conv text := usage_aggregate.conversation_id;
  sess text := usage_aggregate.session_id;
  wf text := usage_aggregate.workflow_id;
  ok boolean := usage_aggregate.success;
  tagged text[] := usage_aggregate.tags;
  tz text;
begin
  if dim is not null
     and dim not in ('provider', 'model', 'user', 'conversation', 'session', 'workflow', 'date') then
    raise exception 'unknown grouping: %', usage_aggregate.group_by using errcode = '22023',
      hint = 'use provider, model, user, conversation, session, workflow or date';
  end if;
  if current_user in ('anon', 'authenticated') then
    -- API roles: a finite range of at most 400 days (private.assert_report_args).
    perform private.assert_report_args(org, usage_aggregate.start_at, usage_aggregate.end_at);
  else
    perform private.assert_member(org);
  end if;
  if hi < lo then
    raise exception 'report range ends (%) before it starts (%)', hi, lo using errcode = '22023';
  end if;
  select o.time_zone into tz from public.organizations o where o.id = org;
  return query
    with calls as (
      select case dim
               when 'provider' then l.provider
               when 'model' then l.model
               when 'user' then l.user_id
               when 'conversation' then l.conversation_id
               when 'session' then l.session_id
               when 'workflow' then l.workflow_id
               when 'date' then ((l.occurred_at at time zone tz)::date)::text
             end as k,
             l.success, l.input_tokens, l.output_tokens, l.cached_input_tokens,
             l.cache_write_tokens, l.reasoning_tokens, l.cost_usd, l.credits, l.latency_ms,
             l.occurred_at, p.rate
      from public.api_usage_logs l
      join private.display_rate_periods(org, lo, hi) p
        on l.occurred_at >= p.period_start and l.occurred_at < p.period_end
      where l.organization_id = org and l.occurred_at >= lo and l.occurred_at < hi
        and (uid is null or l.user_id = uid)
        and (prov is null or l.provider = prov)
        and (mdl is null or l.model = mdl)
        and (conv is null or l.conversation_id = conv)
        and (sess is null or l.session_id = sess)
        and (wf is null or l.workflow_id = wf)
        and (ok is null or l.success = ok)
        and (tagged is null or l.tags @> tagged)
    )
    select c.k,
           grouping(c.k) = 1,
           count(*),
           count(*) filter (where c.success),
           count(*) filter (where not c.success),
           coalesce(sum(c.input_tokens), 0)::bigint,
           coalesce(sum(c.output_tokens), 0)::bigint,
           coalesce(sum(c.cached_input_tokens), 0)::bigint,
           coalesce(sum(c.cache_write_tokens), 0)::bigint,
           coalesce(sum(c.reasoning_tokens), 0)::bigint,
           coalesce(sum(c.input_tokens + c.output_tokens), 0)::bigint,
           coalesce(sum(c.cost_usd), 0),
           coalesce(sum(c.credits), 0),
           case when bool_and(c.rate is not null or c.cost_usd = 0) is not false
                then coalesce(sum(c.cost_usd * c.rate), 0) end,
           sum(c.cost_usd) / nullif(count(*), 0),
           round(avg(c.latency_ms), 1),
           min(c.occurred_at),
           max(c.occurred_at)
    from calls c
    group by grouping sets ((), (c.k))
    having dim is not null or grouping(c.k) = 1
    order by 2 desc, case when dim = 'date' then c.k end, 12 desc, 3 desc, 1 nulls last;
end;
$$;
comment on function public.usage_aggregate(uuid, timestamptz, timestamptz, text, text, text, text, text, text, text, boolean, text[]) is
  'Totals of the calls matching the record filters over [start_at, end_at) (null: unbounded), overall and per provider, model, user, conversation, session, workflow or local date.';
revoke execute on function public.usage_aggregate(uuid, timestamptz, timestamptz, text, text, text, text, text, text, text, boolean, text[]) from public, anon;
grant execute on function public.usage_aggregate(uuid, timestamptz, timestamptz, text, text, text, text, text, text, text, boolean, text[]) to authenticated, service_role;
