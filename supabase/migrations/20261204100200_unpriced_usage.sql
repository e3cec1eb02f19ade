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

-- record_usage, record_usage_batch and public.reprice_usage, which keep and later price such
-- rows, are defined with the billed dimensions in 20261204100500_billed_dimensions.sql.
