-- Long-context tiers do not start at the same point everywhere: xAI bills the higher rate
-- once a prompt *reaches* its threshold, the others once it is *above* it (Anthropic, Gemini,
-- OpenAI). Which tokens count toward it is the same for the four: every prompt token, cache
-- reads and writes included (quotaflow's input_tokens). The rule is data, per provider.
--
-- A long tier without its own cache prices scales the standard cache prices by the tier's
-- input factor (grok-4: $0.75 cached becomes $1.50 above 128k), instead of billing cache reads
-- at the long *input* price ($6), which overcharged them fourfold.

create table public.provider_billing_rules (
  provider text primary key check (provider ~ '^[a-z0-9][a-z0-9_.-]*$'),
  long_context_from text not null default 'above' check (long_context_from in ('above', 'reaching')),
  source_url text,
  checked_on date
);
comment on table public.provider_billing_rules is
  'How a provider applies its prices: long_context_from = above (prompt > threshold) or reaching (prompt >= threshold).';

alter table public.provider_billing_rules enable row level security;
create policy "signed-in users read billing rules" on public.provider_billing_rules
  for select to authenticated
  using (true);
revoke all on public.provider_billing_rules from anon, authenticated;
grant select on public.provider_billing_rules to authenticated;
grant all on public.provider_billing_rules to service_role;

insert into public.provider_billing_rules (provider, long_context_from, source_url, checked_on) values
  ('openai', 'above', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('anthropic', 'above', 'https://www.anthropic.com/pricing', '2026-12-04'),
  ('google', 'above', 'https://ai.google.dev/gemini-api/docs/pricing', '2026-12-04'),
  ('xai', 'reaching', 'https://docs.x.ai/docs/models', '2026-12-04');

-- As in 20261122000200_pricing.sql, with the provider's threshold rule; stable now that it
-- reads provider_billing_rules.
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
  in_price numeric;
  factor numeric;
  reaching boolean := coalesce((select r.long_context_from = 'reaching'
                                from public.provider_billing_rules r
                                where r.provider = pr.provider), false);
begin
  long_context := pr.long_context_threshold is not null
    and (input_tokens > pr.long_context_threshold
         or reaching and input_tokens = pr.long_context_threshold);
  in_price := case when long_context then pr.long_input_usd_per_mtok else pr.input_usd_per_mtok end;
  factor := case when not long_context then 1
                 when pr.input_usd_per_mtok > 0 then pr.long_input_usd_per_mtok / pr.input_usd_per_mtok end;
  input_cost := trim_scale((input_tokens - cached_input_tokens - cache_write_tokens) * in_price / 1000000);
  cached_input_cost := trim_scale(cached_input_tokens * coalesce(
    case when long_context then pr.long_cached_input_usd_per_mtok else pr.cached_input_usd_per_mtok end,
    pr.cached_input_usd_per_mtok * factor, in_price) / 1000000);
  cache_write_cost := trim_scale(cache_write_tokens * coalesce(
    case when long_context then pr.long_cache_write_usd_per_mtok else pr.cache_write_usd_per_mtok end,
    pr.cache_write_usd_per_mtok * factor, in_price) / 1000000);
  output_cost := trim_scale(output_tokens
    * case when long_context then pr.long_output_usd_per_mtok else pr.output_usd_per_mtok end / 1000000);
  total_cost := trim_scale(input_cost + cached_input_cost + cache_write_cost + output_cost);
end;
$$;
revoke execute on function private.cost_parts(public.cost_estimates, bigint, bigint, bigint, bigint) from public;
grant execute on function private.cost_parts(public.cost_estimates, bigint, bigint, bigint, bigint) to authenticated, service_role;
