-- quotaflow: quotas, reservations and the usage log, and the functions that write them.
--
-- The flow of one tracked call:
--   reserve_quota()  holds the call's upper-bound estimate on every quota that applies, in one
--                    atomic step, or refuses with QF001 naming the binding quota;
--   (the provider is called)
--   record_usage()   prices what the provider reported, writes one api_usage_logs row, releases
--                    the hold and charges the actual usage; idempotent by (organization, request_id).
-- Quotas are locked in id order by every function, so overlapping quotas never deadlock.
-- Windows are calendar-aligned in the quota's time zone and roll over lazily, under the row
-- lock, in whichever call first sees reset_at has passed.
--
-- Error codes (SQLSTATE) the client maps to typed exceptions:
--   QF001 quota exceeded   QF002 no price (pricing migration)   QF003 request_id conflict
--   QF004 unknown organization   22023 invalid argument   22004 null argument   42501 not a member

-- =====================================================================
-- Windows
-- =====================================================================

-- The calendar window containing `at` for a quota type in a time zone: [window_start, reset_at).
-- Daily and longer windows start at local midnight (DST-correct: a day may last 23 or 25 hours);
-- hourly windows are one real hour long, aligned to the local hour; 'total' never resets.
create or replace function private.window_bounds(
  quota_type text,
  time_zone text,
  at timestamptz,
  anchor timestamptz default null,
  out window_start timestamptz,
  out reset_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
declare
  local_ts timestamp := at at time zone time_zone;
  unit text;
begin
  case quota_type
    when 'minute' then
      window_start := date_trunc('minute', at);
      reset_at := window_start + interval '1 minute';
    when 'hourly' then
      -- Subtract the local minutes and seconds in real time: correct across DST changes and
      -- in zones offset by half an hour.
      window_start := at - (local_ts - date_trunc('hour', local_ts));
      reset_at := window_start + interval '1 hour';
    when 'daily', 'weekly', 'monthly' then
      unit := case quota_type when 'daily' then 'day' when 'weekly' then 'week' else 'month' end;
      window_start := date_trunc(unit, local_ts) at time zone time_zone;
      reset_at := (date_trunc(unit, local_ts) + ('1 ' || unit)::interval) at time zone time_zone;
    when 'total' then
      window_start := coalesce(anchor, at);
      reset_at := null;
    else
      raise exception 'unknown quota window: %', quota_type using errcode = '22023',
        hint = 'use minute, hourly, daily, weekly, monthly or total';
  end case;
end;
$$;
revoke execute on function private.window_bounds(text, text, timestamptz, timestamptz) from public;
grant execute on function private.window_bounds(text, text, timestamptz, timestamptz) to authenticated, service_role;

-- =====================================================================
-- usage_quotas
-- =====================================================================
create table public.usage_quotas (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  name text check (length(name) <= 200),
  user_id text check (length(user_id) between 1 and 200),
  provider text check (provider ~ '^[a-z0-9][a-z0-9_.-]*$'),
  model text check (length(model) between 1 and 200),
  metric text not null default 'usd' check (metric in ('usd', 'tokens', 'requests')),
  quota_type text not null default 'monthly'
    check (quota_type in ('minute', 'hourly', 'daily', 'weekly', 'monthly', 'total')),
  enforcement text not null default 'hard' check (enforcement in ('hard', 'soft')),
  quota_limit numeric not null check (quota_limit >= 0),
  current_usage numeric not null default 0 check (current_usage >= 0),
  reserved numeric not null default 0 check (reserved >= 0),
  time_zone text not null,
  window_start timestamptz not null,
  reset_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- time_zone is validated by the usage_quotas_set_window trigger when it is set or changed,
  -- not by a check constraint, which would run on every reserve and settle.
  constraint usage_quotas_reset_after_start check (reset_at is null or reset_at > window_start)
);
comment on table public.usage_quotas is
  'Limits per organization, optionally narrowed to one app user, provider or model.';
comment on column public.usage_quotas.user_id is 'The app''s own end-user id (text); null = every user.';
comment on column public.usage_quotas.model is
  'Canonical model name (as in cost_estimates) or an exact snapshot name; null = every model.';
comment on column public.usage_quotas.metric is 'usd = cost, tokens = input + output tokens, requests = calls.';
comment on column public.usage_quotas.quota_type is
  'The window: minute, hourly, daily, weekly, monthly (calendar-aligned in time_zone) or total.';
comment on column public.usage_quotas.enforcement is 'hard refuses calls beyond the limit; soft admits and flags them.';
comment on column public.usage_quotas.current_usage is 'Usage settled in the current window; written only by record_usage.';
comment on column public.usage_quotas.reserved is 'Estimates held by pending reservations; written only by the reservation functions.';
comment on column public.usage_quotas.reset_at is 'Next window boundary (null for total); the window rolls over lazily once passed.';

create index usage_quotas_organization_id_idx on public.usage_quotas (organization_id);

-- Fills the time zone from the organization and computes the current window. reset_at given
-- by the caller (as in `insert ... reset_at = now() + interval '1 day'`) is replaced by the
-- calendar boundary, so every quota of a type resets at the same local instant.
-- Security definer so the organization's time zone is found even when RLS hides the
-- organization from the caller: the insert is then refused by the policy (42501), not
-- reported as an unknown organization.
create or replace function private.usage_quotas_set_window()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  b record;
begin
  if new.organization_id is null then
    raise exception 'organization_id must not be null' using errcode = '22004';
  end if;
  if new.time_zone is null then
    select o.time_zone into new.time_zone from public.organizations o where o.id = new.organization_id;
    if new.time_zone is null then
      raise exception 'unknown organization %', new.organization_id using errcode = 'QF004';
    end if;
  end if;
  if tg_op = 'INSERT' or new.quota_type is distinct from old.quota_type
     or new.time_zone is distinct from old.time_zone then
    perform private.assert_time_zone(new.time_zone);
    b := private.window_bounds(new.quota_type, new.time_zone, now(),
                               case when tg_op = 'INSERT' then now() else old.created_at end);
    new.window_start := b.window_start;
    new.reset_at := b.reset_at;
  end if;
  new.updated_at := now();
  return new;
end;
$$;
revoke execute on function private.usage_quotas_set_window() from public;

-- Only for changes a person makes: the reserve/settle hot path updates reserved and
-- current_usage and must not pay for this trigger on every call.
create trigger usage_quotas_set_window
  before insert or update of organization_id, name, user_id, provider, model, metric, quota_type,
    enforcement, quota_limit, time_zone
  on public.usage_quotas
  for each row execute function private.usage_quotas_set_window();

alter table public.usage_quotas enable row level security;

create policy "members read their organization's quotas" on public.usage_quotas
  for select to authenticated
  using ((select private.has_org_role(organization_id)));

create policy "owners and admins create quotas" on public.usage_quotas
  for insert to authenticated
  with check ((select private.has_org_role(organization_id, array['owner', 'admin'])));

create policy "owners and admins change quotas" on public.usage_quotas
  for update to authenticated
  using ((select private.has_org_role(organization_id, array['owner', 'admin'])))
  with check ((select private.has_org_role(organization_id, array['owner', 'admin'])));

create policy "owners and admins delete quotas" on public.usage_quotas
  for delete to authenticated
  using ((select private.has_org_role(organization_id, array['owner', 'admin'])));

-- Limits, windows and scope are the admins'; current_usage and reserved are the functions'.
revoke all on public.usage_quotas from anon, authenticated;
grant select, delete on public.usage_quotas to authenticated;
grant insert (organization_id, name, user_id, provider, model, metric, quota_type, enforcement,
              quota_limit, time_zone)
  on public.usage_quotas to authenticated;
grant update (name, user_id, provider, model, quota_type, enforcement, quota_limit, time_zone)
  on public.usage_quotas to authenticated;
grant all on public.usage_quotas to service_role;

-- =====================================================================
-- quota_periods: history of closed windows
-- =====================================================================
create table public.quota_periods (
  id bigint generated always as identity primary key,
  quota_id uuid not null references public.usage_quotas (id) on delete cascade,
  organization_id uuid not null references public.organizations (id) on delete cascade,
  quota_type text not null,
  metric text not null,
  quota_limit numeric not null,
  usage numeric not null,
  window_start timestamptz not null,
  window_end timestamptz not null,
  closed_at timestamptz not null default now()
);
comment on table public.quota_periods is
  'One row per closed quota window: what was used against which limit.';
create index quota_periods_quota_id_idx on public.quota_periods (quota_id, window_start);
create index quota_periods_organization_id_idx on public.quota_periods (organization_id);

alter table public.quota_periods enable row level security;

create policy "members read their organization's quota history" on public.quota_periods
  for select to authenticated
  using ((select private.has_org_role(organization_id)));

revoke all on public.quota_periods from anon, authenticated;
grant select on public.quota_periods to authenticated;
grant all on public.quota_periods to service_role;

-- Closes a quota's passed window into quota_periods and opens the window containing now().
-- The caller holds the quota's row lock. Pending holds (reserved) carry over: they are
-- settled into whichever window is current when the call finishes.
create or replace function private.roll_over(q public.usage_quotas)
returns public.usage_quotas
language plpgsql
set search_path = ''
as $$
declare
  b record;
begin
  if q.reset_at is null or q.reset_at > now() then
    return q;
  end if;
  insert into public.quota_periods
    (quota_id, organization_id, quota_type, metric, quota_limit, usage, window_start, window_end)
  values
    (q.id, q.organization_id, q.quota_type, q.metric, q.quota_limit, q.current_usage,
     q.window_start, q.reset_at);
  b := private.window_bounds(q.quota_type, q.time_zone, now(), q.created_at);
  update public.usage_quotas u
     set current_usage = 0, window_start = b.window_start, reset_at = b.reset_at
   where u.id = q.id
  returning u.* into q;
  return q;
end;
$$;
revoke execute on function private.roll_over(public.usage_quotas) from public;

-- =====================================================================
-- quota_reservations
-- =====================================================================
create table public.quota_reservations (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  request_id text not null check (length(request_id) between 1 and 200),
  user_id text,
  provider text not null,
  model text not null,
  estimated_cost numeric not null check (estimated_cost >= 0),
  estimated_tokens bigint not null default 0 check (estimated_tokens >= 0),
  quota_ids uuid[] not null default '{}',
  status text not null default 'pending' check (status in ('pending', 'settled', 'released', 'expired')),
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  closed_at timestamptz,
  constraint quota_reservations_request_unique unique (organization_id, request_id)
);
comment on table public.quota_reservations is
  'Holds of a call''s estimate on its quotas between reserve_quota and record_usage; expire after a TTL.';
comment on column public.quota_reservations.quota_ids is
  'The quotas holding this estimate: usd quotas hold estimated_cost, tokens quotas estimated_tokens, requests quotas 1.';
create index quota_reservations_pending_expiry_idx on public.quota_reservations (organization_id, expires_at)
  where status = 'pending';
create index quota_reservations_expiry_idx on public.quota_reservations (expires_at)
  where status = 'pending';

alter table public.quota_reservations enable row level security;

create policy "members read their organization's reservations" on public.quota_reservations
  for select to authenticated
  using ((select private.has_org_role(organization_id)));

revoke all on public.quota_reservations from anon, authenticated;
grant select on public.quota_reservations to authenticated;
grant all on public.quota_reservations to service_role;

-- =====================================================================
-- api_usage_logs
-- =====================================================================
create table public.api_usage_logs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  request_id text not null check (length(request_id) between 1 and 200),
  reservation_id uuid references public.quota_reservations (id) on delete set null,
  price_id bigint references public.cost_estimates (id),
  user_id text,
  session_id text,
  workflow_id text,
  conversation_id text,
  provider text not null,
  model text not null,
  input_tokens bigint not null default 0 check (input_tokens >= 0),
  output_tokens bigint not null default 0 check (output_tokens >= 0),
  cached_input_tokens bigint not null default 0 check (cached_input_tokens >= 0),
  cache_write_tokens bigint not null default 0 check (cache_write_tokens >= 0),
  reasoning_tokens bigint not null default 0 check (reasoning_tokens >= 0),
  total_tokens bigint generated always as (input_tokens + output_tokens) stored,
  cost_usd numeric not null check (cost_usd >= 0),
  credits numeric not null check (credits >= 0),
  success boolean not null default true,
  usage_estimated boolean not null default false,
  latency_ms integer check (latency_ms >= 0),
  finish_reason text,
  error_code text,
  error_message text,
  tags text[] not null default '{}',
  metadata jsonb not null default '{}',
  occurred_at timestamptz not null default now(),
  recorded_at timestamptz not null default now(),
  constraint api_usage_logs_request_unique unique (organization_id, request_id),
  constraint api_usage_logs_parts_fit check (
    cached_input_tokens + cache_write_tokens <= input_tokens and reasoning_tokens <= output_tokens
  )
);
comment on table public.api_usage_logs is
  'One row per tracked call, success or failure; written only by record_usage, unique per request_id.';
comment on column public.api_usage_logs.input_tokens is
  'Every prompt token, cache reads and writes included (cached_input_tokens, cache_write_tokens are parts).';
comment on column public.api_usage_logs.output_tokens is 'Every generated token, reasoning included (reasoning_tokens is a part).';
comment on column public.api_usage_logs.cost_usd is 'Priced in SQL from the price row price_id at occurred_at.';
comment on column public.api_usage_logs.usage_estimated is
  'True when the provider reported no usage (abandoned or broken stream) and the counts are estimates.';
comment on column public.api_usage_logs.occurred_at is 'When the call was made (prices and reports use it).';

create index api_usage_logs_org_occurred_idx on public.api_usage_logs (organization_id, occurred_at desc);
create index api_usage_logs_price_id_idx on public.api_usage_logs (price_id);
create index api_usage_logs_reservation_id_idx on public.api_usage_logs (reservation_id);

alter table public.api_usage_logs enable row level security;

create policy "members read their organization's usage" on public.api_usage_logs
  for select to authenticated
  using ((select private.has_org_role(organization_id)));

revoke all on public.api_usage_logs from anon, authenticated;
grant select on public.api_usage_logs to authenticated;
grant all on public.api_usage_logs to service_role;

-- =====================================================================
-- Shared pieces of the write functions
-- =====================================================================

-- Whether a quota applies to a call. A model-scoped quota matches the requested name or the
-- canonical name it is priced under (a quota on gpt-4o covers gpt-4o-2024-08-06).
create or replace function private.quota_applies(
  q public.usage_quotas, user_id text, provider text, model text, canonical_model text
)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select (q.user_id is null or q.user_id = user_id)
     and (q.provider is null or q.provider = provider)
     and (q.model is null or q.model = model or q.model = canonical_model);
$$;
revoke execute on function private.quota_applies(public.usage_quotas, text, text, text, text) from public;
grant execute on function private.quota_applies(public.usage_quotas, text, text, text, text) to authenticated, service_role;

-- What a call counts for on a quota of a metric.
create or replace function private.metric_amount(metric text, cost numeric, tokens bigint)
returns numeric
language sql
immutable
set search_path = ''
as $$
  select case metric when 'usd' then cost when 'tokens' then tokens::numeric else 1 end;
$$;
revoke execute on function private.metric_amount(text, numeric, bigint) from public;
grant execute on function private.metric_amount(text, numeric, bigint) to authenticated, service_role;

-- Validates the identifiers every write carries.
create or replace function private.assert_call(organization_id uuid, request_id text, provider text, model text)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if organization_id is null then
    raise exception 'organization_id must not be null' using errcode = '22004';
  end if;
  if request_id is null or length(trim(request_id)) = 0 or length(request_id) > 200 then
    raise exception 'request_id must be 1 to 200 characters' using errcode = '22023';
  end if;
  if provider is null or length(trim(provider)) = 0 then
    raise exception 'provider must not be empty' using errcode = '22023';
  end if;
  if model is null or length(trim(model)) = 0 then
    raise exception 'model must not be empty' using errcode = '22023';
  end if;
end;
$$;
revoke execute on function private.assert_call(uuid, text, text, text) from public;

-- Frees the holds of pending reservations that expired, for one organization (or all).
-- Reservations locked by a concurrent call are skipped (that call is settling them).
-- Lock order, as everywhere: reservations, then quotas by id.
create or replace function private.expire_pending(org uuid, max_rows integer)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  ids uuid[];
  q record;
begin
  select coalesce(array_agg(r.id), '{}') into ids
  from (
    select r.id
    from public.quota_reservations r
    where r.status = 'pending' and r.expires_at <= now()
      and (org is null or r.organization_id = org)
    order by r.id
    for update skip locked
    limit max_rows
  ) r;
  if cardinality(ids) = 0 then
    return 0;
  end if;
  for q in
    select u.id, u.metric
    from public.usage_quotas u
    where u.id in (select unnest(r.quota_ids) from public.quota_reservations r where r.id = any (ids))
    order by u.id
    for update
  loop
    update public.usage_quotas u
       set reserved = greatest(u.reserved - (
             select coalesce(sum(private.metric_amount(q.metric, r.estimated_cost, r.estimated_tokens)), 0)
             from public.quota_reservations r
             where r.id = any (ids) and q.id = any (r.quota_ids)), 0),
           updated_at = now()
     where u.id = q.id;
  end loop;
  update public.quota_reservations r set status = 'expired', closed_at = now() where r.id = any (ids);
  return cardinality(ids);
end;
$$;
revoke execute on function private.expire_pending(uuid, integer) from public;

-- =====================================================================
-- reserve_quota
-- =====================================================================

-- Holds a call's upper-bound estimate on every quota that applies (organization-wide, per
-- user, per provider, per model; usd, tokens and requests), or refuses with QF001 naming the
-- binding quota. The estimate is `estimated_cost` when given, else input_tokens +
-- max_output_tokens priced from cost_estimates. Idempotent by request_id: a pending
-- reservation is returned as it is; an already recorded call returns status 'recorded'.
create or replace function public.reserve_quota(
  organization_id uuid,
  request_id text,
  provider text,
  model text,
  estimated_cost numeric default null,
  input_tokens bigint default 0,
  max_output_tokens bigint default 0,
  user_id text default null,
  ttl_seconds integer default 300
)
returns table (
  reservation_id uuid,
  status text,
  reserved_cost numeric,
  reserved_tokens bigint,
  expires_at timestamptz,
  soft_exceeded_quota_ids uuid[],
  log_id uuid
)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := reserve_quota.organization_id;
  rid text := reserve_quota.request_id;
  prov text := lower(trim(reserve_quota.provider));
  mdl text := lower(trim(reserve_quota.model));
  uid text := reserve_quota.user_id;
  cost numeric := reserve_quota.estimated_cost;
  toks bigint;
  pr public.cost_estimates;
  existing public.quota_reservations;
  expired_ids uuid[];
  expired_quotas uuid[] := '{}'::uuid[];
  q public.usage_quotas;
  amount numeric;
  freed numeric;
  held uuid[] := '{}'::uuid[];
  soft uuid[] := '{}'::uuid[];
  new_id uuid;
  new_expiry timestamptz;
  lid uuid;
  org_found uuid;
begin
  perform private.assert_call(org, rid, prov, mdl);
  perform private.assert_tokens(reserve_quota.input_tokens, reserve_quota.max_output_tokens, 0, 0);
  -- A reservation need not be durable: one lost in a crash only means the call settles
  -- track-only (record_usage charges usage without a reservation), and its hold on
  -- `reserved` is lost with it, in the same transaction. Anything durable that saw it
  -- (record_usage commits synchronously) flushes the WAL past it first. Transaction-scoped,
  -- so safe behind a transaction pooler; record_usage restores the caller's setting if both
  -- run in one transaction, so a settle stays durable.
  if pg_catalog.current_setting('synchronous_commit') <> 'off' then
    perform pg_catalog.set_config('quotaflow.synchronous_commit',
                                  pg_catalog.current_setting('synchronous_commit'), true);
    perform pg_catalog.set_config('synchronous_commit', 'off', true);
  end if;
  -- One call per request at a time (taken before any row lock): a retry racing its original
  -- must find the original's reservation, not hold the estimate a second time.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(org::text || '/' || rid, 0));
  if cost is not null and cost < 0 then
    raise exception 'estimated_cost must not be negative (got %)', cost using errcode = '22023';
  end if;
  if ttl_seconds is null or ttl_seconds < 1 or ttl_seconds > 86400 then
    raise exception 'ttl_seconds must be between 1 and 86400 (got %)', ttl_seconds using errcode = '22023';
  end if;
  -- The organization and an earlier log row of this request, in one lookup.
  select o.id, l.id into org_found, lid
  from public.organizations o
  left join public.api_usage_logs l on l.organization_id = o.id and l.request_id = rid
  where o.id = org;
  if org_found is null then
    raise exception 'unknown organization %', org using errcode = 'QF004';
  end if;

  -- Already recorded: the same event again changes nothing.
  if lid is not null then
    return query select r.id, 'recorded'::text, l.cost_usd, l.total_tokens, r.expires_at, '{}'::uuid[], l.id
      from public.api_usage_logs l left join public.quota_reservations r on r.id = l.reservation_id
      where l.id = lid;
    return;
  end if;
  select r.* into existing from public.quota_reservations r
   where r.organization_id = org and r.request_id = rid
   for update;
  if found and existing.status = 'pending' and existing.expires_at > now() then
    return query select existing.id, 'pending'::text, existing.estimated_cost, existing.estimated_tokens,
                        existing.expires_at, '{}'::uuid[], null::uuid;
    return;
  end if;

  pr := private.resolve_price(prov, mdl, now());
  toks := reserve_quota.input_tokens + reserve_quota.max_output_tokens;
  if cost is null then
    cost := (private.cost_parts(pr, reserve_quota.input_tokens, reserve_quota.max_output_tokens, 0, 0)).total_cost;
  end if;

  -- Lazily free this organization's expired holds, inside the same ordered lock set.
  select coalesce(array_agg(r.id), '{}') into expired_ids
  from (
    select r.id from public.quota_reservations r
    where r.organization_id = org and r.status = 'pending' and r.expires_at <= now()
    order by r.id
    for update skip locked
    limit 100
  ) r;
  if cardinality(expired_ids) > 0 then
    select coalesce(array_agg(distinct x), '{}') into expired_quotas
    from public.quota_reservations r, unnest(r.quota_ids) x
    where r.id = any (expired_ids);
  end if;

  -- Quota rows are locked last, after every lookup.
  -- private.quota_applies and private.metric_amount are inlined here (same expressions): a
  -- function with `set search_path` is never inlined and costs ~0.1 ms a call.
  for q in
    select u.* from public.usage_quotas u
    where u.organization_id = org
      and (((u.user_id is null or u.user_id = uid)
            and (u.provider is null or u.provider = prov)
            and (u.model is null or u.model = mdl or u.model = pr.model))
           or u.id = any (expired_quotas))
    order by u.id
    for update
  loop
    if q.reset_at <= now() then
      q := private.roll_over(q);
    end if;
    if q.id = any (expired_quotas) then
      select coalesce(sum(case q.metric when 'usd' then r.estimated_cost
                                        when 'tokens' then r.estimated_tokens::numeric else 1 end), 0)
        into freed
      from public.quota_reservations r
      where r.id = any (expired_ids) and q.id = any (r.quota_ids);
      q.reserved := greatest(q.reserved - freed, 0);
    end if;
    if (q.user_id is null or q.user_id = uid)
       and (q.provider is null or q.provider = prov)
       and (q.model is null or q.model = mdl or q.model = pr.model) then
      amount := case q.metric when 'usd' then cost when 'tokens' then toks::numeric else 1 end;
      if q.current_usage + q.reserved + amount > q.quota_limit then
        if q.enforcement = 'hard' then
          raise exception 'Quota exceeded: % % quota % (limit %, used %, reserved %, this call needs up to %, resets %)',
            q.quota_type, q.metric, q.id, q.quota_limit, q.current_usage, q.reserved, amount,
            coalesce(q.reset_at::text, 'never')
            using errcode = 'QF001',
                  detail = json_build_object(
                    'quota_id', q.id, 'quota_type', q.quota_type, 'metric', q.metric,
                    'enforcement', q.enforcement, 'quota_limit', q.quota_limit,
                    'current_usage', q.current_usage, 'reserved', q.reserved,
                    'requested', amount,
                    'remaining', greatest(q.quota_limit - q.current_usage - q.reserved, 0),
                    'reset_at', q.reset_at, 'user_id', q.user_id, 'provider', q.provider,
                    'model', q.model)::text;
        end if;
        soft := soft || q.id;
      end if;
      q.reserved := q.reserved + amount;
      held := held || q.id;
    end if;
    update public.usage_quotas u set reserved = trim_scale(q.reserved), updated_at = now() where u.id = q.id;
  end loop;

  if cardinality(expired_ids) > 0 then
    update public.quota_reservations r set status = 'expired', closed_at = now()
     where r.id = any (expired_ids) and r.id is distinct from existing.id;
  end if;

  new_expiry := now() + make_interval(secs => ttl_seconds);
  insert into public.quota_reservations as r
    (organization_id, request_id, user_id, provider, model, estimated_cost, estimated_tokens,
     quota_ids, status, expires_at)
  values (org, rid, uid, prov, mdl, cost, toks, held, 'pending', new_expiry)
  on conflict on constraint quota_reservations_request_unique do update
    set user_id = excluded.user_id, provider = excluded.provider, model = excluded.model,
        estimated_cost = excluded.estimated_cost, estimated_tokens = excluded.estimated_tokens,
        quota_ids = excluded.quota_ids, status = 'pending', created_at = now(),
        expires_at = excluded.expires_at, closed_at = null
  returning r.id into new_id;

  return query select new_id, 'reserved'::text, cost, toks, new_expiry, soft, null::uuid;
end;
$$;
comment on function public.reserve_quota(uuid, text, text, text, numeric, bigint, bigint, text, integer) is
  'Atomically holds a call''s estimate on every applicable quota, or raises QF001 (Quota exceeded).';
revoke execute on function public.reserve_quota(uuid, text, text, text, numeric, bigint, bigint, text, integer) from public, anon, authenticated;
grant execute on function public.reserve_quota(uuid, text, text, text, numeric, bigint, bigint, text, integer) to service_role;

-- =====================================================================
-- record_usage
-- =====================================================================

-- Settles one call: prices the actual usage, writes one api_usage_logs row (success or
-- failure), releases the call's reservation if any and charges every applicable quota.
-- Idempotent by (organization_id, request_id): the same event again returns the first result
-- with duplicate = true and changes nothing; the same id with different content raises QF003.
-- A settle that arrives after its reservation expired still records and charges the usage.
create or replace function public.record_usage(
  organization_id uuid,
  request_id text,
  provider text,
  model text,
  input_tokens bigint default 0,
  output_tokens bigint default 0,
  cached_input_tokens bigint default 0,
  cache_write_tokens bigint default 0,
  reasoning_tokens bigint default 0,
  success boolean default true,
  user_id text default null,
  session_id text default null,
  workflow_id text default null,
  conversation_id text default null,
  latency_ms integer default null,
  finish_reason text default null,
  error_code text default null,
  error_message text default null,
  usage_estimated boolean default false,
  tags text[] default '{}',
  metadata jsonb default '{}',
  occurred_at timestamptz default null
)
returns table (
  log_id uuid,
  cost_usd numeric,
  credits numeric,
  price_id bigint,
  duplicate boolean
)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := record_usage.organization_id;
  rid text := record_usage.request_id;
  prov text := lower(trim(record_usage.provider));
  mdl text := lower(trim(record_usage.model));
  uid text := record_usage.user_id;
  at timestamptz := coalesce(record_usage.occurred_at, now());
  ok boolean := coalesce(record_usage.success, true);
  pr public.cost_estimates;
  canonical text;
  cost numeric := 0;
  rate numeric;
  res public.quota_reservations;
  prev public.api_usage_logs;
  q public.usage_quotas;
  lid uuid;
  toks bigint;
  conflicts text[] := '{}'::text[];
  sync_before text := nullif(pg_catalog.current_setting('quotaflow.synchronous_commit', true), '');
begin
  perform private.assert_call(org, rid, prov, mdl);
  -- A settle is durable: undo reserve_quota's asynchronous commit if it ran in this transaction.
  if sync_before is not null then
    perform pg_catalog.set_config('synchronous_commit', sync_before, true);
    perform pg_catalog.set_config('quotaflow.synchronous_commit', '', true);
  end if;
  -- Serialized with reserve_quota of the same request (same lock): a settle racing a late
  -- reserve either sees its reservation or makes it see the log row ('recorded').
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(org::text || '/' || rid, 0));
  perform private.assert_tokens(record_usage.input_tokens, record_usage.output_tokens,
                                record_usage.cached_input_tokens, record_usage.cache_write_tokens);
  if record_usage.reasoning_tokens is null or record_usage.reasoning_tokens < 0
     or record_usage.reasoning_tokens > record_usage.output_tokens then
    raise exception 'reasoning_tokens (%) must be between 0 and output_tokens (%)',
      record_usage.reasoning_tokens, record_usage.output_tokens using errcode = '22023';
  end if;
  if record_usage.latency_ms is not null and record_usage.latency_ms < 0 then
    raise exception 'latency_ms must not be negative' using errcode = '22023';
  end if;
  select o.credits_per_usd into rate from public.organizations o where o.id = org;
  if not found then
    raise exception 'unknown organization %', org using errcode = 'QF004';
  end if;

  toks := record_usage.input_tokens + record_usage.output_tokens;
  begin
    pr := private.resolve_price(prov, mdl, at);
    canonical := pr.model;
    cost := (private.cost_parts(pr, record_usage.input_tokens, record_usage.output_tokens,
                                record_usage.cached_input_tokens, record_usage.cache_write_tokens)).total_cost;
  exception when sqlstate 'QF002' then
    -- A failed call that used nothing costs nothing even for a model without a price;
    -- anything else must be priced, never logged as $0.
    if ok or toks > 0 then
      raise;
    end if;
    pr := null;
    canonical := mdl;
  end;

  select r.* into res from public.quota_reservations r
   where r.organization_id = org and r.request_id = rid
   for update;

  insert into public.api_usage_logs as l
    (organization_id, request_id, reservation_id, price_id, user_id, session_id, workflow_id,
     conversation_id, provider, model, input_tokens, output_tokens, cached_input_tokens,
     cache_write_tokens, reasoning_tokens, cost_usd, credits, success, usage_estimated,
     latency_ms, finish_reason, error_code, error_message, tags, metadata, occurred_at)
  values
    (org, rid, res.id, pr.id, uid, record_usage.session_id, record_usage.workflow_id,
     record_usage.conversation_id, prov, mdl, record_usage.input_tokens, record_usage.output_tokens,
     record_usage.cached_input_tokens, record_usage.cache_write_tokens, record_usage.reasoning_tokens,
     cost, trim_scale(cost * rate), ok, coalesce(record_usage.usage_estimated, false),
     record_usage.latency_ms, record_usage.finish_reason, record_usage.error_code,
     record_usage.error_message, coalesce(record_usage.tags, '{}'), coalesce(record_usage.metadata, '{}'), at)
  on conflict on constraint api_usage_logs_request_unique do nothing
  returning l.id into lid;

  if lid is null then
    select l.* into prev from public.api_usage_logs l where l.organization_id = org and l.request_id = rid;
    if prev.provider <> prov then conflicts := array_append(conflicts, 'provider'); end if;
    if prev.model <> mdl then conflicts := array_append(conflicts, 'model'); end if;
    if prev.success <> ok then conflicts := array_append(conflicts, 'success'); end if;
    if prev.user_id is distinct from uid then conflicts := array_append(conflicts, 'user_id'); end if;
    if prev.input_tokens <> record_usage.input_tokens then conflicts := array_append(conflicts, 'input_tokens'); end if;
    if prev.output_tokens <> record_usage.output_tokens then conflicts := array_append(conflicts, 'output_tokens'); end if;
    if prev.cached_input_tokens <> record_usage.cached_input_tokens then conflicts := array_append(conflicts, 'cached_input_tokens'); end if;
    if prev.cache_write_tokens <> record_usage.cache_write_tokens then conflicts := array_append(conflicts, 'cache_write_tokens'); end if;
    if prev.reasoning_tokens <> record_usage.reasoning_tokens then conflicts := array_append(conflicts, 'reasoning_tokens'); end if;
    if cardinality(conflicts) > 0 then
      raise exception 'request_id % was already recorded with different %', rid, array_to_string(conflicts, ', ')
        using errcode = 'QF003',
              detail = json_build_object('request_id', rid, 'log_id', prev.id, 'fields', conflicts)::text,
              hint = 'use a new request_id for a new call; replay an event only unchanged';
    end if;
    return query select prev.id, prev.cost_usd, prev.credits, prev.price_id, true;
    return;
  end if;

  if res.id is not null then
    update public.quota_reservations r set status = 'settled', closed_at = now() where r.id = res.id;
  end if;

  -- Quota rows are locked last and updated. private.quota_applies and
  -- private.metric_amount are inlined (same expressions): a function with `set search_path`
  -- is never inlined and costs ~0.1 ms a call.
  for q in
    select u.* from public.usage_quotas u
    where u.organization_id = org
      and (((u.user_id is null or u.user_id = uid)
            and (u.provider is null or u.provider = prov)
            and (u.model is null or u.model = mdl or u.model = canonical))
           or (res.status = 'pending' and u.id = any (res.quota_ids)))
    order by u.id
    for update
  loop
    if q.reset_at <= now() then
      q := private.roll_over(q);
    end if;
    if res.status = 'pending' and q.id = any (res.quota_ids) then
      q.reserved := greatest(q.reserved - case q.metric when 'usd' then res.estimated_cost
                                                        when 'tokens' then res.estimated_tokens::numeric
                                                        else 1 end, 0);
    end if;
    if (q.user_id is null or q.user_id = uid)
       and (q.provider is null or q.provider = prov)
       and (q.model is null or q.model = mdl or q.model = canonical) then
      q.current_usage := q.current_usage + case q.metric when 'usd' then cost
                                                         when 'tokens' then toks::numeric else 1 end;
    end if;
    update public.usage_quotas u
       set current_usage = trim_scale(q.current_usage), reserved = trim_scale(q.reserved), updated_at = now()
     where u.id = q.id;
  end loop;

  return query select lid, cost, trim_scale(cost * rate), pr.id, false;
end;
$$;
comment on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz) is
  'Settles a call: one usage-log row, the reservation released, quotas charged; idempotent by request_id.';
revoke execute on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz) from public, anon, authenticated;
grant execute on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz) to service_role;

-- =====================================================================
-- release_reservation / expire_reservations
-- =====================================================================

-- Frees a pending reservation's holds without recording usage (the call never happened).
-- Returns false when there was nothing pending to release.
create or replace function public.release_reservation(organization_id uuid, request_id text)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  res public.quota_reservations;
  q public.usage_quotas;
begin
  perform private.assert_call(release_reservation.organization_id, release_reservation.request_id, '-', '-');
  select r.* into res from public.quota_reservations r
   where r.organization_id = release_reservation.organization_id
     and r.request_id = release_reservation.request_id
   for update;
  if not found or res.status <> 'pending' then
    return false;
  end if;
  for q in
    select u.* from public.usage_quotas u where u.id = any (res.quota_ids) order by u.id for update
  loop
    update public.usage_quotas u
       set reserved = greatest(u.reserved - private.metric_amount(q.metric, res.estimated_cost, res.estimated_tokens), 0),
           updated_at = now()
     where u.id = q.id;
  end loop;
  update public.quota_reservations r set status = 'released', closed_at = now() where r.id = res.id;
  return true;
end;
$$;
comment on function public.release_reservation(uuid, text) is
  'Frees a pending reservation without recording usage; false when nothing was pending.';
revoke execute on function public.release_reservation(uuid, text) from public, anon, authenticated;
grant execute on function public.release_reservation(uuid, text) to service_role;

-- Frees every expired pending reservation (reserve_quota also does it lazily per organization).
-- Safe to run from a scheduler such as pg_cron; returns how many reservations expired.
create or replace function public.expire_reservations(organization_id uuid default null)
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  n integer;
  total integer := 0;
begin
  loop
    n := private.expire_pending(expire_reservations.organization_id, 500);
    total := total + n;
    exit when n < 500;
  end loop;
  return total;
end;
$$;
comment on function public.expire_reservations(uuid) is
  'Frees the holds of every expired pending reservation; returns how many expired.';
revoke execute on function public.expire_reservations(uuid) from public, anon, authenticated;
grant execute on function public.expire_reservations(uuid) to service_role;

-- =====================================================================
-- Read-only views of quotas: check_quota / get_quota_status
-- =====================================================================

-- A quota as it stands now, without writing: a passed window counts as rolled over and the
-- holds of expired reservations as freed. Security invoker: RLS decides what a caller sees.
create or replace function private.effective_quotas(org uuid)
returns table (
  quota public.usage_quotas,
  current_usage numeric,
  reserved numeric,
  window_start timestamptz,
  reset_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
begin
  perform private.assert_member(org);
  return query
    select u,
           case when u.reset_at is not null and u.reset_at <= now() then 0::numeric else u.current_usage end,
           greatest(u.reserved - coalesce((
             select sum(private.metric_amount(u.metric, r.estimated_cost, r.estimated_tokens))
             from public.quota_reservations r
             where r.organization_id = org and r.status = 'pending' and r.expires_at <= now()
               and u.id = any (r.quota_ids)), 0), 0),
           case when u.reset_at is not null and u.reset_at <= now() then b.window_start else u.window_start end,
           case when u.reset_at is not null and u.reset_at <= now() then b.reset_at else u.reset_at end
    from public.usage_quotas u
    left join lateral private.window_bounds(u.quota_type, u.time_zone, now(), u.created_at) b on true
    where u.organization_id = org;
end;
$$;
revoke execute on function private.effective_quotas(uuid) from public;
grant execute on function private.effective_quotas(uuid) to authenticated, service_role;

-- The debugging query: would a call of this estimated cost be admitted? One row per quota that
-- applies (binding ones first); no rows means no quota applies. Read-only.
--   select * from check_quota('<org-id>', 'openai', 'gpt-4', 0.01);
create or replace function public.check_quota(
  organization_id uuid,
  provider text,
  model text,
  estimated_cost numeric,
  user_id text default null,
  estimated_tokens bigint default 0
)
returns table (
  allowed boolean,
  quota_limit numeric,
  current_usage numeric,
  remaining numeric,
  quota_type text,
  quota_id uuid,
  metric text,
  enforcement text,
  reserved numeric,
  reset_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_variable
declare
  prov text := lower(trim(check_quota.provider));
  mdl text := lower(trim(check_quota.model));
  canonical text := mdl;
begin
  if check_quota.estimated_cost is null or check_quota.estimated_cost < 0 then
    raise exception 'estimated_cost must be a non-negative amount' using errcode = '22023';
  end if;
  begin
    canonical := (private.resolve_price(prov, mdl, now())).model;
  exception when sqlstate 'QF002' then
    canonical := mdl;
  end;
  return query
    select (e.quota).enforcement = 'soft'
             or e.current_usage + e.reserved
                + private.metric_amount((e.quota).metric, check_quota.estimated_cost, check_quota.estimated_tokens)
                <= (e.quota).quota_limit,
           (e.quota).quota_limit,
           e.current_usage,
           greatest((e.quota).quota_limit - e.current_usage - e.reserved, 0),
           (e.quota).quota_type,
           (e.quota).id,
           (e.quota).metric,
           (e.quota).enforcement,
           e.reserved,
           e.reset_at
    from private.effective_quotas(check_quota.organization_id) e
    where private.quota_applies(e.quota, check_quota.user_id, prov, mdl, canonical)
    order by 1, 4;
end;
$$;
comment on function public.check_quota(uuid, text, text, numeric, text, bigint) is
  'Read-only: whether a call of this estimated cost fits each applicable quota (binding first).';
revoke execute on function public.check_quota(uuid, text, text, numeric, text, bigint) from public, anon;
grant execute on function public.check_quota(uuid, text, text, numeric, text, bigint) to authenticated, service_role;

-- Every quota of an organization as it stands now.
create or replace function public.get_quota_status(organization_id uuid)
returns table (
  quota_id uuid,
  name text,
  quota_type text,
  metric text,
  enforcement text,
  user_id text,
  provider text,
  model text,
  quota_limit numeric,
  current_usage numeric,
  reserved numeric,
  remaining numeric,
  percent_used numeric,
  window_start timestamptz,
  reset_at timestamptz,
  time_zone text
)
language sql
stable
set search_path = ''
as $$
  select (e.quota).id, (e.quota).name, (e.quota).quota_type, (e.quota).metric, (e.quota).enforcement,
         (e.quota).user_id, (e.quota).provider, (e.quota).model, (e.quota).quota_limit,
         e.current_usage, e.reserved,
         greatest((e.quota).quota_limit - e.current_usage - e.reserved, 0),
         case when (e.quota).quota_limit > 0
              then round(100 * e.current_usage / (e.quota).quota_limit, 2)
              else case when e.current_usage > 0 then 100 else 0 end end,
         e.window_start, e.reset_at, (e.quota).time_zone
  from private.effective_quotas(get_quota_status.organization_id) e
  order by (e.quota).quota_type, (e.quota).metric, (e.quota).id;
$$;
comment on function public.get_quota_status(uuid) is
  'Every quota of the organization: limit, usage, reserved, remaining, percent used, window and reset time.';
revoke execute on function public.get_quota_status(uuid) from public, anon;
grant execute on function public.get_quota_status(uuid) to authenticated, service_role;
