-- Strict price resolution: a model is priced only as itself, as a known alias, or as the
-- model a real snapshot suffix was added to. The longest-prefix rule it replaces priced
-- gemini-3.5-flash-lite as gemini-3.5-flash and gpt-5.6-cyber as gpt-5.6.
--
--   exact name                       gpt-4o, claude-sonnet-4-5
--   a provider or models/ prefix     openai/gpt-4o, gemini/gemini-2.5-flash, models/gemini-2.5-flash
--   an alias (model_aliases)         gpt-5-codex -> gpt-5, claude-3-5-sonnet-latest -> claude-3-5-sonnet
--   a dated snapshot of either       gpt-4o-2024-08-06, claude-sonnet-4-5-20250929, grok-4-0709,
--                                    gemini-2.5-flash-preview-05-20, gemini-1.5-flash-002
--
-- Anything else (-lite, -cyber, -8b, -mini of a known model) is unknown: QF002.

-- =====================================================================
-- model_aliases
-- =====================================================================
create table public.model_aliases (
  provider text not null check (provider ~ '^[a-z0-9][a-z0-9_.-]*$'),
  alias text not null check (alias ~ '^[a-z0-9][a-z0-9_.:/-]*$'),
  model text not null check (model ~ '^[a-z0-9][a-z0-9_.:/-]*$'),
  source_url text,
  checked_on date,
  primary key (provider, alias),
  constraint model_aliases_not_itself check (alias <> model)
);
comment on table public.model_aliases is
  'Names a provider accepts for a priced model (moving -latest names, variants billed as the model). '
  'A call keeps the name it used (api_usage_logs.model) and the model that priced it (priced_model).';

alter table public.model_aliases enable row level security;

create policy "signed-in users read aliases" on public.model_aliases
  for select to authenticated
  using (true);

revoke all on public.model_aliases from anon, authenticated;
grant select on public.model_aliases to authenticated;
grant all on public.model_aliases to service_role;

insert into public.model_aliases (provider, alias, model, source_url, checked_on) values
  ('openai', 'gpt-5-codex', 'gpt-5', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('openai', 'gpt-5-chat-latest', 'gpt-5', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('openai', 'gpt-5.1-codex', 'gpt-5.1', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('openai', 'gpt-5.1-codex-max', 'gpt-5.1', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('openai', 'gpt-5.1-chat-latest', 'gpt-5.1', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('openai', 'gpt-5.2-codex', 'gpt-5.2', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('openai', 'gpt-5.2-chat-latest', 'gpt-5.2', 'https://platform.openai.com/docs/pricing', '2026-12-04'),
  ('anthropic', 'claude-3-opus-latest', 'claude-3-opus', 'https://docs.anthropic.com/en/docs/about-claude/models', '2026-12-04'),
  ('anthropic', 'claude-3-5-haiku-latest', 'claude-3-5-haiku', 'https://docs.anthropic.com/en/docs/about-claude/models', '2026-12-04'),
  ('anthropic', 'claude-3-5-sonnet-latest', 'claude-3-5-sonnet', 'https://docs.anthropic.com/en/docs/about-claude/models', '2026-12-04'),
  ('anthropic', 'claude-3-7-sonnet-latest', 'claude-3-7-sonnet', 'https://docs.anthropic.com/en/docs/about-claude/models', '2026-12-04'),
  ('anthropic', 'claude-opus-4-0', 'claude-opus-4', 'https://docs.anthropic.com/en/docs/about-claude/models', '2026-12-04'),
  ('anthropic', 'claude-sonnet-4-0', 'claude-sonnet-4', 'https://docs.anthropic.com/en/docs/about-claude/models', '2026-12-04'),
  ('xai', 'grok-3-latest', 'grok-3', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4-latest', 'grok-4', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4-fast-reasoning', 'grok-4-fast', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4-fast-non-reasoning', 'grok-4-fast', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4-1-fast-reasoning', 'grok-4-1-fast', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4-1-fast-non-reasoning', 'grok-4-1-fast', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4.20-0309-reasoning', 'grok-4.20', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4.20-0309-non-reasoning', 'grok-4.20', 'https://docs.x.ai/docs/models', '2026-12-04'),
  ('xai', 'grok-4.20-multi-agent-0309', 'grok-4.20', 'https://docs.x.ai/docs/models', '2026-12-04');

-- =====================================================================
-- Resolution
-- =====================================================================

-- The catalogue's spelling of a model name: lower case, without a models/ prefix (Gemini) or a
-- provider prefix (LiteLLM's openai/, anthropic/, gemini/, google/, xai/).
create or replace function private.normalise_model(p_model text)
returns text
language sql
immutable
set search_path = ''
as $$
  select pg_catalog.regexp_replace(
           pg_catalog.regexp_replace(pg_catalog.lower(pg_catalog.btrim(p_model)), '^models/', ''),
           '^(openai|anthropic|google|gemini|vertex_ai|xai)/', '')
$$;
revoke execute on function private.normalise_model(text) from public;
grant execute on function private.normalise_model(text) to authenticated, service_role;

-- A dated snapshot suffix: -2024-08-06, -20250929, -0709, -002, -preview-05-20,
-- -preview-09-2025, -exp-0827. Nothing else is stripped.
create or replace function private.snapshot_base(p_model text)
returns text
language sql
immutable
set search_path = ''
as $$
  select pg_catalog.regexp_replace(
           p_model,
           '-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|\d{3}|(preview|exp)-(\d{2}-\d{2}|\d{2}-\d{4}|\d{4}))$', '')
$$;
revoke execute on function private.snapshot_base(text) from public;
grant execute on function private.snapshot_base(text) to authenticated, service_role;

-- The price row for a provider and model at an instant (see the top of this file), or null
-- when the model is unknown.
create or replace function private.lookup_price(p_provider text, p_model text, p_at timestamptz)
returns public.cost_estimates
language plpgsql
stable
set search_path = ''
as $$
declare
  p text := pg_catalog.lower(pg_catalog.btrim(p_provider));
  m text := private.normalise_model(p_model);
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
    -- The name itself first: a catalogue row of its own wins over an alias.
    select ce.* into price
    from public.cost_estimates ce
    where ce.provider = p
      and ce.model in (candidate, (select a.model from public.model_aliases a
                                   where a.provider = p and a.alias = candidate))
      and ce.effective_from <= p_at and (ce.effective_to is null or ce.effective_to > p_at)
    order by ce.model = candidate desc
    limit 1;
    if found then
      return price;
    end if;
    exit when base = m;
  end loop;
  return null;
end;
$$;
revoke execute on function private.lookup_price(text, text, timestamptz) from public;
grant execute on function private.lookup_price(text, text, timestamptz) to authenticated, service_role;

-- The same, raising QF002 when the model is unknown, so it is never priced as $0 or as
-- another model.
create or replace function private.resolve_price(p_provider text, p_model text, p_at timestamptz)
returns public.cost_estimates
language plpgsql
stable
set search_path = ''
as $$
declare
  price public.cost_estimates := private.lookup_price(p_provider, p_model, p_at);
begin
  if price.id is not null then
    return price;
  end if;
  raise exception 'no price for % model % at %', pg_catalog.lower(pg_catalog.btrim(p_provider)),
    private.normalise_model(p_model), p_at
    using errcode = 'QF002',
          detail = pg_catalog.json_build_object('provider', pg_catalog.lower(pg_catalog.btrim(p_provider)),
                                                'model', private.normalise_model(p_model),
                                                'at', p_at)::text,
          hint = 'add the model (quotaflow pricing sync, or an alias in model_aliases); '
                 'a variant of a known model is not priced as that model';
end;
$$;
revoke execute on function private.resolve_price(text, text, timestamptz) from public;
grant execute on function private.resolve_price(text, text, timestamptz) to authenticated, service_role;
