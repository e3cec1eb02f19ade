-- Billed dimensions beyond the token columns, as data: a call's usage_details counts them by
-- name ({"cache_write_1h": 8000, "audio_input": 120, "web_search": 2}); price_dimensions says
-- what each is (tokens per million or requests per thousand, and which token column it is part
-- of); price_rates holds a model's own rate for it, and dimension_defaults a provider's rule
-- when a model has none (Anthropic: a 1-hour cache write costs twice the input price). A
-- dimension without any rate is priced as the column it is part of (as before), so a new
-- dimension is a row here, not a new code path. Rows keep the dimensions and the service tier
-- the provider reported.

create table public.price_dimensions (
  dimension text primary key check (dimension ~ '^[a-z][a-z0-9_]{0,39}$'),
  unit text not null check (unit in ('token', 'request')),
  per numeric not null check (per > 0),
  part_of text check (part_of in ('input', 'cache_write', 'output')),
  description text not null,
  constraint price_dimensions_requests_are_no_part check (unit = 'token' or part_of is null)
);
comment on table public.price_dimensions is
  'What a usage_details key counts: tokens (priced per million) carved out of a token column, or requests (per thousand).';

create table public.price_rates (
  price_id bigint not null references public.cost_estimates (id) on delete cascade,
  dimension text not null references public.price_dimensions (dimension),
  long_context boolean not null default false,
  usd numeric not null check (usd >= 0),
  primary key (price_id, dimension, long_context)
);
comment on table public.price_rates is
  'A price row''s own USD rate for a billed dimension (per price_dimensions.per units), standard or long-context.';

create table public.dimension_defaults (
  provider text not null check (provider ~ '^[a-z0-9][a-z0-9_.-]*$'),
  dimension text not null references public.price_dimensions (dimension),
  input_multiple numeric check (input_multiple >= 0),
  usd numeric check (usd >= 0),
  source_url text,
  checked_on date,
  primary key (provider, dimension),
  constraint dimension_defaults_one_rule check ((input_multiple is null) <> (usd is null))
);
create index price_rates_dimension_idx on public.price_rates (dimension);
create index dimension_defaults_dimension_idx on public.dimension_defaults (dimension);
comment on table public.dimension_defaults is
  'A provider''s rate for a dimension when the model has none: a multiple of the input price in force, or a fixed USD rate.';

alter table public.price_dimensions enable row level security;
alter table public.price_rates enable row level security;
alter table public.dimension_defaults enable row level security;
create policy "signed-in users read dimensions" on public.price_dimensions for select to authenticated using (true);
create policy "signed-in users read rates" on public.price_rates for select to authenticated using (true);
create policy "signed-in users read dimension defaults" on public.dimension_defaults for select to authenticated using (true);
revoke all on public.price_dimensions, public.price_rates, public.dimension_defaults from anon, authenticated;
grant select on public.price_dimensions, public.price_rates, public.dimension_defaults to authenticated;
grant all on public.price_dimensions, public.price_rates, public.dimension_defaults to service_role;

insert into public.price_dimensions (dimension, unit, per, part_of, description) values
  ('cache_write_1h', 'token', 1000000, 'cache_write',
   'Prompt tokens written to a 1-hour cache (Anthropic); part of cache_write_tokens, the rest are 5-minute writes'),
  ('audio_input', 'token', 1000000, 'input', 'Audio prompt tokens; part of the uncached input tokens'),
  ('audio_output', 'token', 1000000, 'output', 'Audio output tokens; part of output_tokens'),
  ('web_search', 'request', 1000, null, 'Server-side web searches the provider ran for the call');

insert into public.dimension_defaults (provider, dimension, input_multiple, usd, source_url, checked_on) values
  ('anthropic', 'cache_write_1h', 2, null, 'https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching', '2026-12-04'),
  ('anthropic', 'web_search', null, 10, 'https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool', '2026-12-04');

alter table public.api_usage_logs
  add column usage_details jsonb not null default '{}',
  add column service_tier text check (length(service_tier) <= 40);
comment on column public.api_usage_logs.usage_details is
  'Billed dimensions beyond the token columns, by price_dimensions name, as the provider reported them.';
comment on column public.api_usage_logs.service_tier is 'The service tier the provider reported for the call (standard, priority, flex, batch, ...).';

-- The price per million tokens of a token column for a price row, standard or long-context:
-- the one rule cost_parts and details_cost share.
create or replace function private.bucket_price(pr public.cost_estimates, long_context boolean, bucket text)
returns numeric
language sql
immutable
set search_path = ''
as $$
  select case bucket
    when 'input' then case when long_context then pr.long_input_usd_per_mtok else pr.input_usd_per_mtok end
    when 'output' then case when long_context then pr.long_output_usd_per_mtok else pr.output_usd_per_mtok end
    when 'cached_input' then coalesce(
      case when long_context then pr.long_cached_input_usd_per_mtok else pr.cached_input_usd_per_mtok end,
      pr.cached_input_usd_per_mtok * case when long_context and pr.input_usd_per_mtok > 0
                                          then pr.long_input_usd_per_mtok / pr.input_usd_per_mtok else 1 end,
      case when long_context then pr.long_input_usd_per_mtok else pr.input_usd_per_mtok end)
    when 'cache_write' then coalesce(
      case when long_context then pr.long_cache_write_usd_per_mtok else pr.cache_write_usd_per_mtok end,
      pr.cache_write_usd_per_mtok * case when long_context and pr.input_usd_per_mtok > 0
                                         then pr.long_input_usd_per_mtok / pr.input_usd_per_mtok else 1 end,
      case when long_context then pr.long_input_usd_per_mtok else pr.input_usd_per_mtok end)
  end
$$;
revoke execute on function private.bucket_price(public.cost_estimates, boolean, text) from public;
grant execute on function private.bucket_price(public.cost_estimates, boolean, text) to authenticated, service_role;

-- As in 20261204100300_long_context_rules.sql, its prices from private.bucket_price.
create or replace function private.cost_parts(
  pr public.cost_estimates,
  input_tokens bigint,
  output_tokens bigint,
  cached_input_tokens bigint,
  cache_write_tokens bigint,
  out long_context boolean,
  out input_cost numeric,
  out cached_input_cost numeric,
  out cache_write_cost numeric,
  out output_cost numeric,
  out total_cost numeric
)
language plpgsql
stable
set search_path = ''
as $$
declare
  reaching boolean := coalesce((select r.long_context_from = 'reaching'
                                from public.provider_billing_rules r
                                where r.provider = pr.provider), false);
begin
  long_context := pr.long_context_threshold is not null
    and (input_tokens > pr.long_context_threshold
         or reaching and input_tokens = pr.long_context_threshold);
  input_cost := trim_scale((input_tokens - cached_input_tokens - cache_write_tokens)
                           * private.bucket_price(pr, long_context, 'input') / 1000000);
  cached_input_cost := trim_scale(cached_input_tokens
                                  * private.bucket_price(pr, long_context, 'cached_input') / 1000000);
  cache_write_cost := trim_scale(cache_write_tokens
                                 * private.bucket_price(pr, long_context, 'cache_write') / 1000000);
  output_cost := trim_scale(output_tokens * private.bucket_price(pr, long_context, 'output') / 1000000);
  total_cost := trim_scale(input_cost + cached_input_cost + cache_write_cost + output_cost);
end;
$$;

-- What a call's billed dimensions add to (or take from) its token columns' cost: each counted
-- at its own rate (the model's, else the provider's default) instead of its column's.
create or replace function private.details_cost(pr public.cost_estimates, long_context boolean, details jsonb)
returns numeric
language sql
stable
set search_path = ''
as $$
  select coalesce(pg_catalog.sum(
           (d.value)::numeric
           * (coalesce(
                (select r.usd from public.price_rates r
                  where r.price_id = pr.id and r.dimension = d.key
                    and (r.long_context = details_cost.long_context or not r.long_context)
                  order by r.long_context desc limit 1),
                (select coalesce(dd.usd, dd.input_multiple * private.bucket_price(pr, details_cost.long_context, 'input'))
                   from public.dimension_defaults dd
                  where dd.provider = pr.provider and dd.dimension = d.key),
                case when pd.part_of is not null
                     then private.bucket_price(pr, details_cost.long_context, pd.part_of) else 0 end)
              - case when pd.part_of is not null
                     then private.bucket_price(pr, details_cost.long_context, pd.part_of) else 0 end)
           / pd.per), 0)
  from pg_catalog.jsonb_each_text(coalesce(details, '{}')) d
  join public.price_dimensions pd on pd.dimension = d.key
$$;
revoke execute on function private.details_cost(public.cost_estimates, boolean, jsonb) from public;
grant execute on function private.details_cost(public.cost_estimates, boolean, jsonb) to authenticated, service_role;

-- A call's usage_details must name known dimensions with whole, non-negative counts that fit
-- in the token columns they are part of. 22023 otherwise, naming what is wrong.
create or replace function private.assert_usage_details(
  details jsonb, input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
  output_tokens bigint
)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  k text;
  v jsonb;
  part text;
  n numeric;
  used_input numeric := 0;
  used_write numeric := 0;
  used_output numeric := 0;
begin
  if details is null or pg_catalog.jsonb_typeof(details) <> 'object' then
    raise exception 'usage_details must be a JSON object' using errcode = '22023';
  end if;
  if (select count(*) from pg_catalog.jsonb_object_keys(details)) > 16 then
    raise exception 'usage_details has more than 16 dimensions' using errcode = '22023';
  end if;
  for k, v in select * from pg_catalog.jsonb_each(details) loop
    select pd.part_of into part from public.price_dimensions pd where pd.dimension = k;
    if not found then
      raise exception 'usage_details: unknown dimension %', k using errcode = '22023',
        hint = 'the dimensions are the rows of public.price_dimensions';
    end if;
    if pg_catalog.jsonb_typeof(v) <> 'number' or (v::text)::numeric < 0
       or (v::text)::numeric <> pg_catalog.trunc((v::text)::numeric) or (v::text)::numeric > 2000000000 then
      raise exception 'usage_details.% must be a whole number of at least 0 (got %)', k, v using errcode = '22023';
    end if;
    n := (v::text)::numeric;
    if part = 'input' then used_input := used_input + n;
    elsif part = 'cache_write' then used_write := used_write + n;
    elsif part = 'output' then used_output := used_output + n;
    end if;
  end loop;
  if used_input > input_tokens - cached_input_tokens - cache_write_tokens then
    raise exception 'usage_details: % input tokens are more than the % uncached input tokens',
      used_input, input_tokens - cached_input_tokens - cache_write_tokens using errcode = '22023';
  end if;
  if used_write > cache_write_tokens then
    raise exception 'usage_details: % cache-write tokens are more than cache_write_tokens (%)',
      used_write, cache_write_tokens using errcode = '22023';
  end if;
  if used_output > output_tokens then
    raise exception 'usage_details: % output tokens are more than output_tokens (%)',
      used_output, output_tokens using errcode = '22023';
  end if;
end;
$$;
revoke execute on function private.assert_usage_details(jsonb, bigint, bigint, bigint, bigint) from public;
grant execute on function private.assert_usage_details(jsonb, bigint, bigint, bigint, bigint) to authenticated, service_role;

-- Service tiers are prices too: a price row per tier (standard, flex, priority, batch), as
-- LiteLLM lists them; a call is priced at its reported tier's row, else at standard.
alter table public.cost_estimates
  add column service_tier text not null default 'standard'
    check (service_tier in ('standard', 'flex', 'priority', 'batch'));
alter table public.cost_estimates drop constraint cost_estimates_no_overlap;
alter table public.cost_estimates add constraint cost_estimates_no_overlap exclude using gist (
  provider with =,
  model with =,
  service_tier with =,
  tstzrange(effective_from, effective_to) with &&
);
comment on column public.cost_estimates.service_tier is
  'The service tier these prices are for; a call of a tier without its own row is priced at standard.';

-- A provider's name for a tier as quotaflow's: OpenAI's default/auto and unknown names are
-- standard, LiteLLM's batches is batch.
create or replace function private.tier_name(tier text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case pg_catalog.lower(pg_catalog.btrim(tier))
    when 'flex' then 'flex'
    when 'priority' then 'priority'
    when 'batch' then 'batch'
    when 'batches' then 'batch'
    else 'standard'
  end
$$;
revoke execute on function private.tier_name(text) from public;
grant execute on function private.tier_name(text) to authenticated, service_role;

-- As in 20261204100100_strict_price_resolution.sql, for a service tier: its own row, else
-- the standard one.
drop function private.lookup_price(text, text, timestamptz);
create or replace function private.lookup_price(
  p_provider text, p_model text, p_at timestamptz, p_tier text default 'standard'
)
returns public.cost_estimates
language plpgsql
stable
set search_path = ''
as $$
declare
  p text := pg_catalog.lower(pg_catalog.btrim(p_provider));
  m text := private.normalise_model(p_model);
  tier text := private.tier_name(p_tier);
  base text;
  candidate text;
  price public.cost_estimates;
begin
  if p is null or p = '' then
    raise exception 'provider must not be empty' using errcode = '22023';
  end if;
  if m is null or m = '' then
    raise exception 'model must not be empty' using errcode = '22023';
  end if;
  base := private.snapshot_base(m);
  foreach candidate in array array[m, base] loop
    -- The name itself first (a catalogue row of its own wins over an alias), then the tier.
    select ce.* into price
    from public.cost_estimates ce
    where ce.provider = p
      and ce.model in (candidate, (select a.model from public.model_aliases a
                                   where a.provider = p and a.alias = candidate))
      and ce.service_tier in (tier, 'standard')
      and ce.effective_from <= p_at and (ce.effective_to is null or ce.effective_to > p_at)
    order by ce.model = candidate desc, ce.service_tier = tier desc
    limit 1;
    if found then
      return price;
    end if;
    exit when base = m;
  end loop;
  return null;
end;
$$;
revoke execute on function private.lookup_price(text, text, timestamptz, text) from public;
grant execute on function private.lookup_price(text, text, timestamptz, text) to authenticated, service_role;

-- record_usage: as in 20261122000400_quotas_and_usage.sql, keeping the usage of an unknown
-- model unpriced (20261204100200_unpriced_usage.sql), priced at the call's service tier, with
-- its billed dimensions (usage_details); its arguments and result change, so it is dropped and
-- created again (record_usage_batch with it).
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
  occurred_at timestamptz default null,
  usage_details jsonb default '{}',
  service_tier text default null
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
  details jsonb := coalesce(record_usage.usage_details, '{}');
  parts record;
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
  perform private.assert_usage_details(details, record_usage.input_tokens,
    record_usage.cached_input_tokens, record_usage.cache_write_tokens, record_usage.output_tokens);
  if record_usage.service_tier is not null and pg_catalog.length(record_usage.service_tier) > 40 then
    raise exception 'service_tier is longer than 40 characters' using errcode = '22023';
  end if;
  if record_usage.latency_ms is not null and record_usage.latency_ms < 0 then
    raise exception 'latency_ms must not be negative' using errcode = '22023';
  end if;
  select o.credits_per_usd into rate from public.organizations o where o.id = org;
  if not found then
    raise exception 'unknown organization %', org using errcode = 'QF004';
  end if;

  toks := record_usage.input_tokens + record_usage.output_tokens;
  pr := private.lookup_price(prov, mdl, at, record_usage.service_tier);
  canonical := coalesce(pr.model, mdl);
  if pr.id is null then
    pr := private.fallback_price(org, at);  -- quotas still match the call's own model
  end if;
  if pr.id is not null then
    parts := private.cost_parts(pr, record_usage.input_tokens, record_usage.output_tokens,
                                record_usage.cached_input_tokens, record_usage.cache_write_tokens);
    cost := trim_scale(parts.total_cost + private.details_cost(pr, parts.long_context, details));
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
     priced_model, unpriced, usage_details, service_tier)
  values
    (org, rid, res.id, pr.id, uid, record_usage.session_id, record_usage.workflow_id,
     record_usage.conversation_id, prov, mdl, record_usage.input_tokens, record_usage.output_tokens,
     record_usage.cached_input_tokens, record_usage.cache_write_tokens, record_usage.reasoning_tokens,
     cost, trim_scale(cost * rate), ok, coalesce(record_usage.usage_estimated, false),
     record_usage.latency_ms, record_usage.finish_reason, record_usage.error_code,
     record_usage.error_message, coalesce(record_usage.tags, '{}'), coalesce(record_usage.metadata, '{}'), at,
     pr.model, no_price, details, record_usage.service_tier)
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
    if prev.usage_details <> details then conflicts := array_append(conflicts, 'usage_details'); end if;
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
comment on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz, jsonb, text) is
  'Settles a call: one usage-log row (unpriced when the model has no price), the reservation released, quotas charged; idempotent by request_id.';
revoke execute on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz, jsonb, text) from public, anon, authenticated;
grant execute on function public.record_usage(uuid, text, text, text, bigint, bigint, bigint, bigint, bigint, boolean, text, text, text, text, integer, text, text, text, boolean, text[], jsonb, timestamptz, jsonb, text) to service_role;

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
        occurred_at => (e ->> 'occurred_at')::timestamptz,
        usage_details => coalesce(u -> 'details', e -> 'usage_details', '{}'::jsonb),
        service_tier => coalesce(u ->> 'service_tier', e ->> 'service_tier')
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

-- reprice_usage: prices the rows recorded unpriced (20261204100200_unpriced_usage.sql) once a
-- price exists, billed dimensions and tier included.
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
  parts record;
begin
  if max_rows is null or max_rows < 1 or max_rows > 100000 then
    raise exception 'max_rows must be between 1 and 100000 (got %)', max_rows using errcode = '22023';
  end if;
  for l in
    select u.* from public.api_usage_logs u
    where u.unpriced and (org is null or u.organization_id = org)
      and ((private.lookup_price(u.provider, u.model, u.occurred_at, u.service_tier)).id is not null
           or (private.fallback_price(u.organization_id, u.occurred_at)).id is not null)
    order by u.occurred_at, u.id
    limit max_rows
    for update of u skip locked
  loop
    pr := private.lookup_price(l.provider, l.model, l.occurred_at, l.service_tier);
    canonical := coalesce(pr.model, l.model);
    if pr.id is null then
      pr := private.fallback_price(l.organization_id, l.occurred_at);
    end if;
    parts := private.cost_parts(pr, l.input_tokens, l.output_tokens, l.cached_input_tokens,
                                l.cache_write_tokens);
    cost := trim_scale(parts.total_cost + private.details_cost(pr, parts.long_context, l.usage_details));
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

-- What a call with these tokens and billed dimensions costs now (or at `at`): the invoice
-- arithmetic of record_usage, for checking a figure by hand.
create or replace function public.estimate_usage_cost(
  provider text,
  model text,
  input_tokens bigint,
  output_tokens bigint,
  cached_input_tokens bigint default 0,
  cache_write_tokens bigint default 0,
  usage_details jsonb default '{}',
  at timestamptz default now(),
  service_tier text default null
)
returns numeric
language plpgsql
stable
set search_path = ''
as $$
declare
  pr public.cost_estimates := private.lookup_price(provider, model, at, service_tier);
  parts record;
begin
  if pr.id is null then
    pr := private.resolve_price(provider, model, at);  -- QF002, with its detail
  end if;
  perform private.assert_tokens(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens);
  perform private.assert_usage_details(usage_details, input_tokens, cached_input_tokens,
                                       cache_write_tokens, output_tokens);
  parts := private.cost_parts(pr, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens);
  return trim_scale(parts.total_cost + private.details_cost(pr, parts.long_context, usage_details));
end;
$$;
revoke execute on function public.estimate_usage_cost(text, text, bigint, bigint, bigint, bigint, jsonb, timestamptz, text) from public, anon;
grant execute on function public.estimate_usage_cost(text, text, bigint, bigint, bigint, bigint, jsonb, timestamptz, text) to authenticated, service_role;
