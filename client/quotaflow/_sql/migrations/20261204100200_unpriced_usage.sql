-- Usage of a model without a price is never dropped. The provider billed the call, so
-- record_usage keeps its row with every token, marked unpriced (cost 0 until a price exists),
-- counted on token and request quotas and shown as unpriced in the reports;
-- public.reprice_usage() prices such rows once the catalogue knows the model, charging the
-- usd quotas whose window the call fell in if that window is still open. reserve_quota still
-- refuses an unknown model before the call (QF002) unless the organization opted into a
-- fallback price (organizations.fallback_provider / fallback_model), which then prices both
-- the hold and the row. Every row now names the model that priced it (priced_model).

alter table public.organizations
  add column fallback_provider text,
  add column fallback_model text,
  add constraint organizations_fallback_complete
    check ((fallback_provider is null) = (fallback_model is null));
comment on column public.organizations.fallback_model is
  'Opt-in: a priced model whose price is used for models the catalogue does not know (reserve and settle).';

alter table public.api_usage_logs
  add column priced_model text,
  add column unpriced boolean not null default false,
  add constraint api_usage_logs_unpriced_costs_nothing_yet
    check (not unpriced or (cost_usd = 0 and price_id is null));
comment on column public.api_usage_logs.priced_model is
  'The catalogue model that priced the row (the call''s own name is model): an alias, snapshot or fallback shows here.';
comment on column public.api_usage_logs.unpriced is
  'The model had no price when the call was recorded: tokens kept, cost 0 until public.reprice_usage() prices it.';
create index api_usage_logs_unpriced_idx on public.api_usage_logs (organization_id) where unpriced;

update public.api_usage_logs l set priced_model = ce.model
  from public.cost_estimates ce where ce.id = l.price_id and l.priced_model is null;

-- The organization's fallback price at an instant (the price of its fallback model), or null
-- when it has none.
create or replace function private.fallback_price(org uuid, p_at timestamptz)
returns public.cost_estimates
language sql
stable
set search_path = ''
as $$
  select (private.lookup_price(o.fallback_provider, o.fallback_model, p_at)).*
  from public.organizations o
  where o.id = org and o.fallback_model is not null
$$;
revoke execute on function private.fallback_price(uuid, timestamptz) from public;
grant execute on function private.fallback_price(uuid, timestamptz) to service_role;

-- reserve_quota: as in 20261202100100_request_id_conflicts.sql, with the organization's fallback
-- price for an unknown model (quotas are matched on the call's own model then, never the
-- fallback's).
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
  canonical text;
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
  prev_provider text;
  prev_model text;
  prev_user text;
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

  -- Already recorded: the same call again changes nothing; another call under its id is a
  -- conflict, never a replay of someone else's result.
  if lid is not null then
    select l.provider, l.model, l.user_id into prev_provider, prev_model, prev_user
      from public.api_usage_logs l where l.id = lid;
    perform private.assert_same_call(rid, 'recorded', prev_provider, prev_model, prev_user, prov, mdl, uid);
    return query select r.id, 'recorded'::text, l.cost_usd, l.total_tokens, r.expires_at, '{}'::uuid[], l.id
      from public.api_usage_logs l left join public.quota_reservations r on r.id = l.reservation_id
      where l.id = lid;
    return;
  end if;
  select r.* into existing from public.quota_reservations r
   where r.organization_id = org and r.request_id = rid
   for update;
  if found and existing.status = 'pending' and existing.expires_at > now() then
    perform private.assert_same_call(rid, 'reserved', existing.provider, existing.model, existing.user_id,
                                     prov, mdl, uid);
    return query select existing.id, 'pending'::text, existing.estimated_cost, existing.estimated_tokens,
                        existing.expires_at, '{}'::uuid[], null::uuid;
    return;
  end if;

  pr := private.lookup_price(prov, mdl, now());
  canonical := pr.model;
  if pr.id is null then
    pr := private.fallback_price(org, now());
    canonical := mdl;
    if pr.id is null then
      perform private.resolve_price(prov, mdl, now());  -- QF002, with its detail
    end if;
  end if;
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
            and (u.model is null or u.model = mdl or u.model = canonical))
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
       and (q.model is null or q.model = mdl or q.model = canonical) then
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

-- record_usage: as in 20261122000400_quotas_and_usage.sql, keeping unpriced usage. Its result
-- gains a column, so the function is dropped and created again (record_usage_batch too).
drop function public.record_usage_batch(jsonb);
drop function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz);
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
  duplicate boolean,
  unpriced boolean
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
  no_price boolean := false;
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
  pr := private.lookup_price(prov, mdl, at);
  canonical := coalesce(pr.model, mdl);
  if pr.id is null then
    pr := private.fallback_price(org, at);  -- quotas still match the call's own model
  end if;
  if pr.id is not null then
    cost := (private.cost_parts(pr, record_usage.input_tokens, record_usage.output_tokens,
                                record_usage.cached_input_tokens, record_usage.cache_write_tokens)).total_cost;
  else
    -- The call happened: its row is kept with its tokens, unpriced (cost 0 until
    -- reprice_usage finds a price), and counts on token and request quotas. A failed call
    -- that used nothing simply costs nothing.
    no_price := ok or toks > 0;
  end if;

  select r.* into res from public.quota_reservations r
   where r.organization_id = org and r.request_id = rid
   for update;

  insert into public.api_usage_logs as l
    (organization_id, request_id, reservation_id, price_id, user_id, session_id, workflow_id,
     conversation_id, provider, model, input_tokens, output_tokens, cached_input_tokens,
     cache_write_tokens, reasoning_tokens, cost_usd, credits, success, usage_estimated,
     latency_ms, finish_reason, error_code, error_message, tags, metadata, occurred_at,
     priced_model, unpriced)
  values
    (org, rid, res.id, pr.id, uid, record_usage.session_id, record_usage.workflow_id,
     record_usage.conversation_id, prov, mdl, record_usage.input_tokens, record_usage.output_tokens,
     record_usage.cached_input_tokens, record_usage.cache_write_tokens, record_usage.reasoning_tokens,
     cost, trim_scale(cost * rate), ok, coalesce(record_usage.usage_estimated, false),
     record_usage.latency_ms, record_usage.finish_reason, record_usage.error_code,
     record_usage.error_message, coalesce(record_usage.tags, '{}'), coalesce(record_usage.metadata, '{}'), at,
     pr.model, no_price)
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
    return query select prev.id, prev.cost_usd, prev.credits, prev.price_id, true, prev.unpriced;
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

  return query select lid, cost, trim_scale(cost * rate), pr.id, false, no_price;
end;
$$;
comment on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz) is
  'Settles a call: one usage-log row (unpriced when the model has no price), the reservation released, quotas charged; idempotent by request_id.';
revoke execute on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz) from public, anon, authenticated;
grant execute on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz) to service_role;

create or replace function public.record_usage_batch(events jsonb)
returns table (
  idx integer,
  request_id text,
  log_id uuid,
  cost_usd numeric,
  credits numeric,
  price_id bigint,
  duplicate boolean,
  unpriced boolean,
  error_code text,
  error_message text
)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  e jsonb;
  u jsonb;
  i integer := 0;
  r record;
  k bigint;
begin
  if events is null or jsonb_typeof(events) <> 'array' then
    raise exception 'events must be a JSON array' using errcode = '22023';
  end if;
  if jsonb_array_length(events) > 1000 then
    raise exception 'at most 1000 events per batch (got %)', jsonb_array_length(events)
      using errcode = '22023';
  end if;

  -- Take every lock the batch will need up front, in the order single calls take theirs:
  -- first the per-request advisory locks of reserve_quota / record_usage (all of them, in
  -- key order), then reservations, then quotas by id. So batches never deadlock with each
  -- other, nor with a reserve or single settle of one of their request_ids (which holds its
  -- advisory lock while it waits for the rows).
  -- (Events whose organization_id is not a uuid fail on their own below.)
  for k in
    select distinct pg_catalog.hashtextextended((x ->> 'organization_id')::uuid::text || '/' || (x ->> 'request_id'), 0)
    from jsonb_array_elements(events) x
    where x ->> 'organization_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
      and x ->> 'request_id' is not null
    order by 1
  loop
    perform pg_catalog.pg_advisory_xact_lock(k);
  end loop;
  perform 1
  from public.quota_reservations qr
  join (
    select (x ->> 'organization_id')::uuid as org, x ->> 'request_id' as rid
    from jsonb_array_elements(events) x
    where x ->> 'organization_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
  ) k on qr.organization_id = k.org and qr.request_id = k.rid
  order by qr.id
  for update of qr;
  perform 1
  from public.usage_quotas q
  where q.organization_id in (
    select (x ->> 'organization_id')::uuid
    from jsonb_array_elements(events) x
    where x ->> 'organization_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
  order by q.id
  for update;

  for e in select * from jsonb_array_elements(events)
  loop
    u := coalesce(e -> 'usage', e);
    begin
      select * into r from public.record_usage(
        organization_id => (e ->> 'organization_id')::uuid,
        request_id => e ->> 'request_id',
        provider => e ->> 'provider',
        model => e ->> 'model',
        input_tokens => coalesce((u ->> 'input_tokens')::bigint, 0),
        output_tokens => coalesce((u ->> 'output_tokens')::bigint, 0),
        cached_input_tokens => coalesce((u ->> 'cached_input_tokens')::bigint, 0),
        cache_write_tokens => coalesce((u ->> 'cache_write_tokens')::bigint, 0),
        reasoning_tokens => coalesce((u ->> 'reasoning_tokens')::bigint, 0),
        success => coalesce((e ->> 'success')::boolean, true),
        user_id => e ->> 'user_id',
        session_id => e ->> 'session_id',
        workflow_id => e ->> 'workflow_id',
        conversation_id => e ->> 'conversation_id',
        latency_ms => (e ->> 'latency_ms')::integer,
        finish_reason => e ->> 'finish_reason',
        error_code => e ->> 'error_code',
        error_message => e ->> 'error_message',
        usage_estimated => coalesce((u ->> 'estimated')::boolean, (e ->> 'usage_estimated')::boolean, false),
        tags => coalesce(array(select jsonb_array_elements_text(e -> 'tags')), '{}'::text[]),
        metadata => coalesce(e -> 'metadata', '{}'::jsonb),
        occurred_at => (e ->> 'occurred_at')::timestamptz
      );
      return query select i, e ->> 'request_id', r.log_id, r.cost_usd, r.credits, r.price_id,
                          r.duplicate, r.unpriced, null::text, null::text;
    exception when others then
      return query select i, e ->> 'request_id', null::uuid, null::numeric, null::numeric,
                          null::bigint, null::boolean, null::boolean, sqlstate::text, sqlerrm::text;
    end;
    i := i + 1;
  end loop;
end;
$$;
comment on function public.record_usage_batch(jsonb) is
  'Settles a JSON array of usage events, each idempotent and atomic on its own; one result row per event.';
revoke execute on function public.record_usage_batch(jsonb) from public, anon, authenticated;
grant execute on function public.record_usage_batch(jsonb) to service_role;

-- =====================================================================
-- reprice_usage
-- =====================================================================

-- Prices unpriced rows whose model the catalogue (or the organization's fallback) now knows,
-- at the price in force when each call happened, and charges the usd quotas the call applies
-- to whose window it fell in, when that window is still open (a closed window is history).
-- Only rows that can be priced are taken (oldest first, at most max_rows, skipping rows another
-- reprice holds), so rows of a still unknown model never hold the others back; the quota rows
-- are locked once, at the end, in id order, as record_usage locks them. Run it again while
-- repriced = max_rows.
create or replace function public.reprice_usage(organization_id uuid default null, max_rows integer default 1000)
returns table (repriced bigint, still_unpriced bigint)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  org uuid := reprice_usage.organization_id;
  l public.api_usage_logs;
  pr public.cost_estimates;
  canonical text;
  cost numeric;
  rate numeric;
  done bigint := 0;
  quota_ids uuid[] := array[]::uuid[];
  amounts numeric[] := array[]::numeric[];
  q public.usage_quotas;
begin
  if max_rows is null or max_rows < 1 or max_rows > 100000 then
    raise exception 'max_rows must be between 1 and 100000 (got %)', max_rows using errcode = '22023';
  end if;
  for l in
    select u.* from public.api_usage_logs u
    where u.unpriced and (org is null or u.organization_id = org)
      and ((private.lookup_price(u.provider, u.model, u.occurred_at)).id is not null
           or (private.fallback_price(u.organization_id, u.occurred_at)).id is not null)
    order by u.occurred_at, u.id
    limit max_rows
    for update of u skip locked
  loop
    pr := private.lookup_price(l.provider, l.model, l.occurred_at);
    canonical := coalesce(pr.model, l.model);
    if pr.id is null then
      pr := private.fallback_price(l.organization_id, l.occurred_at);
    end if;
    cost := (private.cost_parts(pr, l.input_tokens, l.output_tokens, l.cached_input_tokens,
                                l.cache_write_tokens)).total_cost;
    select o.credits_per_usd into rate from public.organizations o where o.id = l.organization_id;
    update public.api_usage_logs u
       set cost_usd = cost, credits = trim_scale(cost * rate), price_id = pr.id,
           priced_model = pr.model, unpriced = false
     where u.id = l.id;
    select quota_ids || coalesce(array_agg(u.id), '{}'),
           amounts || coalesce(array_agg(cost), '{}')
      into quota_ids, amounts
    from public.usage_quotas u
    where u.organization_id = l.organization_id and u.metric = 'usd'
      and (u.user_id is null or u.user_id = l.user_id)
      and (u.provider is null or u.provider = l.provider)
      and (u.model is null or u.model = l.model or u.model = canonical)
      and u.window_start <= l.occurred_at
      and (u.reset_at is null or (l.occurred_at < u.reset_at and u.reset_at > now()));
    done := done + 1;
  end loop;
  for q in
    select u.* from public.usage_quotas u where u.id = any (quota_ids) order by u.id for update
  loop
    if q.reset_at is null or q.reset_at > now() then
      update public.usage_quotas u
         set current_usage = trim_scale(u.current_usage
                                        + (select sum(t.a) from unnest(quota_ids, amounts) t(i, a)
                                           where t.i = q.id)),
             updated_at = now()
       where u.id = q.id;
    end if;
  end loop;
  return query select done, (select count(*) from public.api_usage_logs u
                             where u.unpriced and (org is null or u.organization_id = org));
end;
$$;
comment on function public.reprice_usage(uuid, integer) is
  'Prices unpriced usage rows whose model now has a price (at the price of their time); charges still-open usd quota windows.';
revoke execute on function public.reprice_usage(uuid, integer) from public, anon, authenticated;
grant execute on function public.reprice_usage(uuid, integer) to service_role;
