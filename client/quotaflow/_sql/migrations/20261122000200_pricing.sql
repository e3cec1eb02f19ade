-- quotaflow: prices and the arithmetic that turns tokens into dollars.
--
-- All pricing happens here, in SQL, so a report, a quota and a log row can never disagree
-- about what a call cost. Prices are USD per million tokens and effective-dated: a price change
-- closes the old row (effective_to) and inserts a new one, so logged costs never move and
-- every log row references the price row it used.

create extension if not exists btree_gist with schema extensions;

-- =====================================================================
-- cost_estimates
-- =====================================================================
create table public.cost_estimates (
  id bigint generated always as identity primary key,
  provider text not null check (provider ~ '^[a-z0-9][a-z0-9_.-]*$'),
  model text not null check (model ~ '^[a-z0-9][a-z0-9_.:/-]*$'),
  input_usd_per_mtok numeric not null check (input_usd_per_mtok >= 0),
  output_usd_per_mtok numeric not null check (output_usd_per_mtok >= 0),
  cached_input_usd_per_mtok numeric check (cached_input_usd_per_mtok >= 0),
  cache_write_usd_per_mtok numeric check (cache_write_usd_per_mtok >= 0),
  long_context_threshold integer check (long_context_threshold > 0),
  long_input_usd_per_mtok numeric check (long_input_usd_per_mtok >= 0),
  long_output_usd_per_mtok numeric check (long_output_usd_per_mtok >= 0),
  long_cached_input_usd_per_mtok numeric check (long_cached_input_usd_per_mtok >= 0),
  long_cache_write_usd_per_mtok numeric check (long_cache_write_usd_per_mtok >= 0),
  effective_from timestamptz not null default '2020-01-01 00:00:00+00',
  effective_to timestamptz,
  source_url text,
  checked_on date,
  created_at timestamptz not null default now(),
  constraint cost_estimates_period_valid check (effective_to is null or effective_to > effective_from),
  constraint cost_estimates_long_tier_complete check (
    (long_context_threshold is null) = (long_input_usd_per_mtok is null and long_output_usd_per_mtok is null)
    or long_context_threshold is not null and long_input_usd_per_mtok is not null
       and long_output_usd_per_mtok is not null
  ),
  -- One price per provider, model and instant.
  constraint cost_estimates_no_overlap exclude using gist (
    provider with =,
    model with =,
    tstzrange(effective_from, effective_to) with &&
  )
);
comment on table public.cost_estimates is
  'List prices in USD per million tokens, per provider and canonical model, effective-dated.';
comment on column public.cost_estimates.model is
  'Canonical name (gpt-4o); dated snapshots such as gpt-4o-2024-08-06 resolve to the longest known prefix.';
comment on column public.cost_estimates.cached_input_usd_per_mtok is
  'Price of prompt tokens read from the cache; null means the input price.';
comment on column public.cost_estimates.cache_write_usd_per_mtok is
  'Price of prompt tokens written to the cache; null means the input price.';
comment on column public.cost_estimates.long_context_threshold is
  'Prompt size in tokens above which the long_* prices apply to the whole call; null = no tier.';

alter table public.cost_estimates enable row level security;

create policy "signed-in users read prices" on public.cost_estimates
  for select to authenticated
  using (true);

revoke all on public.cost_estimates from anon, authenticated;
grant select on public.cost_estimates to authenticated;
grant all on public.cost_estimates to service_role;

-- =====================================================================
-- Price resolution and arithmetic (private: used by the public functions below)
-- =====================================================================

-- The price row for a provider and model at an instant: exact name first, then the longest
-- known name that the model starts with followed by '-' (gpt-4o-2024-08-06 -> gpt-4o,
-- claude-sonnet-4-5-20250929 -> claude-sonnet-4-5). Raises QF002 when nothing matches, so an
-- unknown model is never priced as $0.
create or replace function private.resolve_price(p_provider text, p_model text, p_at timestamptz)
returns public.cost_estimates
language plpgsql
stable
set search_path = ''
as $$
declare
  m text := regexp_replace(lower(trim(p_model)), '^models/', '');
  p text := lower(trim(p_provider));
  price public.cost_estimates;
begin
  if p is null or p = '' then
    raise exception 'provider must not be empty' using errcode = '22023';
  end if;
  if m is null or m = '' then
    raise exception 'model must not be empty' using errcode = '22023';
  end if;
  select ce.* into price
  from public.cost_estimates ce
  where ce.provider = p and ce.model = m
    and ce.effective_from <= p_at and (ce.effective_to is null or ce.effective_to > p_at);
  if found then
    return price;
  end if;
  select ce.* into price
  from public.cost_estimates ce
  where ce.provider = p
    and left(m, length(ce.model) + 1) = ce.model || '-'
    and ce.effective_from <= p_at and (ce.effective_to is null or ce.effective_to > p_at)
  order by length(ce.model) desc
  limit 1;
  if found then
    return price;
  end if;
  raise exception 'no price for % model % at %', p, m, p_at
    using errcode = 'QF002',
          detail = json_build_object('provider', p, 'model', m, 'at', p_at)::text,
          hint = 'add a row to cost_estimates (quotaflow pricing import) for this model';
end;
$$;
revoke execute on function private.resolve_price(text, text, timestamptz) from public;
grant execute on function private.resolve_price(text, text, timestamptz) to authenticated, service_role;

-- Rejects token counts that cannot be a real call. 22023 = invalid_parameter_value.
create or replace function private.assert_tokens(
  input_tokens bigint, output_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint
)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if input_tokens is null or output_tokens is null or cached_input_tokens is null
     or cache_write_tokens is null then
    raise exception 'token counts must not be null' using errcode = '22023';
  end if;
  if input_tokens < 0 or output_tokens < 0 or cached_input_tokens < 0 or cache_write_tokens < 0 then
    raise exception 'token counts must not be negative (input %, output %, cached %, cache write %)',
      input_tokens, output_tokens, cached_input_tokens, cache_write_tokens
      using errcode = '22023';
  end if;
  if cached_input_tokens + cache_write_tokens > input_tokens then
    raise exception 'cached (%) plus cache-write (%) tokens exceed input tokens (%)',
      cached_input_tokens, cache_write_tokens, input_tokens
      using errcode = '22023',
            hint = 'input_tokens counts every prompt token, cached and cache writes included';
  end if;
end;
$$;
revoke execute on function private.assert_tokens(bigint, bigint, bigint, bigint) from public;
grant execute on function private.assert_tokens(bigint, bigint, bigint, bigint) to authenticated, service_role;

-- =====================================================================
-- estimate_cost_breakdown / estimate_cost
-- =====================================================================

-- The cost of tokens at one price row, per kind of token. input_tokens counts every prompt
-- token; cached_input_tokens and cache_write_tokens are parts of it. Above the row's
-- long_context_threshold the long-context prices apply to the whole call. Exact numeric, so
-- sums of logged costs match the provider's invoice to the cent.
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
immutable
set search_path = ''
as $$
declare
  in_price numeric;
begin
  long_context := pr.long_context_threshold is not null and input_tokens > pr.long_context_threshold;
  in_price := case when long_context then pr.long_input_usd_per_mtok else pr.input_usd_per_mtok end;
  input_cost := trim_scale((input_tokens - cached_input_tokens - cache_write_tokens) * in_price / 1000000);
  cached_input_cost := trim_scale(cached_input_tokens * coalesce(
    case when long_context then pr.long_cached_input_usd_per_mtok else pr.cached_input_usd_per_mtok end,
    in_price) / 1000000);
  cache_write_cost := trim_scale(cache_write_tokens * coalesce(
    case when long_context then pr.long_cache_write_usd_per_mtok else pr.cache_write_usd_per_mtok end,
    in_price) / 1000000);
  output_cost := trim_scale(output_tokens
    * case when long_context then pr.long_output_usd_per_mtok else pr.output_usd_per_mtok end / 1000000);
  total_cost := trim_scale(input_cost + cached_input_cost + cache_write_cost + output_cost);
end;
$$;
revoke execute on function private.cost_parts(public.cost_estimates, bigint, bigint, bigint, bigint) from public;
grant execute on function private.cost_parts(public.cost_estimates, bigint, bigint, bigint, bigint) to authenticated, service_role;

-- What a call costs, per kind of token, and which price row priced it.
create or replace function public.estimate_cost_breakdown(
  provider text,
  model text,
  input_tokens bigint,
  output_tokens bigint,
  cached_input_tokens bigint default 0,
  cache_write_tokens bigint default 0,
  at timestamptz default now()
)
returns table (
  price_id bigint,
  priced_model text,
  long_context boolean,
  input_cost numeric,
  cached_input_cost numeric,
  cache_write_cost numeric,
  output_cost numeric,
  total_cost numeric
)
language plpgsql
stable
set search_path = ''
as $$
declare
  pr public.cost_estimates;
begin
  perform private.assert_tokens(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens);
  pr := private.resolve_price(provider, model, coalesce(at, now()));
  return query
    select pr.id, pr.model, c.long_context, c.input_cost, c.cached_input_cost, c.cache_write_cost,
           c.output_cost, c.total_cost
    from private.cost_parts(pr, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens) c;
end;
$$;
comment on function public.estimate_cost_breakdown(text, text, bigint, bigint, bigint, bigint, timestamptz) is
  'Cost of a call per kind of token (USD) and the cost_estimates row that priced it.';
revoke execute on function public.estimate_cost_breakdown(text, text, bigint, bigint, bigint, bigint, timestamptz) from public, anon;
grant execute on function public.estimate_cost_breakdown(text, text, bigint, bigint, bigint, bigint, timestamptz) to authenticated, service_role;

-- The total of estimate_cost_breakdown: USD for the given tokens at the given instant.
create or replace function public.estimate_cost(
  provider text,
  model text,
  input_tokens bigint,
  output_tokens bigint,
  cached_input_tokens bigint default 0,
  cache_write_tokens bigint default 0,
  at timestamptz default now()
)
returns numeric
language sql
stable
set search_path = ''
as $$
  select b.total_cost
  from public.estimate_cost_breakdown(provider, model, input_tokens, output_tokens,
                                      cached_input_tokens, cache_write_tokens, at) b;
$$;
comment on function public.estimate_cost(text, text, bigint, bigint, bigint, bigint, timestamptz) is
  'USD cost of a call with these tokens, priced from cost_estimates (raises QF002 for an unknown model).';
revoke execute on function public.estimate_cost(text, text, bigint, bigint, bigint, bigint, timestamptz) from public, anon;
grant execute on function public.estimate_cost(text, text, bigint, bigint, bigint, bigint, timestamptz) to authenticated, service_role;
