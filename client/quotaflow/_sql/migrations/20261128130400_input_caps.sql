-- quotaflow: caps on what any client may write.
--
-- The red team recorded 100,000 tags, model names with control characters, bidirectional
-- overrides or `<script>`, and an occurred_at in the year 2999. The caps are CHECK constraints
-- on the tables every write path ends in (record_usage, record_usage_batch, reserve_quota, the
-- quota policies, direct inserts by the service role), so every client obeys them; each check
-- calls a helper that raises 22023 with a sentence and, as JSON detail, the field — the HTTP
-- functions turn it into a 400 naming the field. quotaflow.limits holds the same caps for
-- Python, to refuse such input before a provider is called.
--
--   identifiers   1 to 200 characters, no control or bidirectional-override characters
--   tags          at most 64, each an identifier of at most 100 characters
--   metadata      a JSON object of at most 16 KiB (as jsonb renders it)
--   model names   1 to 200 of [a-z0-9_.:/@+-] (stored lowercased), starting alphanumeric
--   occurred_at   from 2000 to at most 5 minutes after now()
--
-- The constraints are NOT VALID: existing rows are not rescanned (the log may be large);
-- every row written from now on is checked.

-- =====================================================================
-- Helpers (private): true, or 22023 naming the field
-- =====================================================================

-- An identifier or label: length, and no C0/C1 control, DEL or bidirectional mark/override.
create or replace function private.assert_text_cap(field text, value text, max_length integer default 200)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
  if value is null then
    return true;
  end if;
  if length(value) < 1 or length(value) > max_length then
    raise exception '% must be 1 to % characters (got %)', field, max_length, length(value)
      using errcode = '22023', detail = pg_catalog.json_build_object('field', field)::text;
  end if;
  if value ~ '[\x01-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]' then
    raise exception '% must not contain control or bidirectional-override characters', field
      using errcode = '22023', detail = pg_catalog.json_build_object('field', field)::text;
  end if;
  return true;
end;
$$;
comment on function private.assert_text_cap(text, text, integer) is
  'Check helper: an identifier of 1..max_length characters without control or bidi characters, else 22023.';
revoke execute on function private.assert_text_cap(text, text, integer) from public;
-- A CHECK runs as the writer: owners and admins write usage_quotas through RLS.
grant execute on function private.assert_text_cap(text, text, integer) to authenticated, service_role;

-- A model name as stored (lowercased by record_usage and reserve_quota).
create or replace function private.assert_model_cap(field text, value text)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
  if value is not null and (length(value) > 200 or value !~ '^[a-z0-9][a-z0-9_.:/@+-]*$') then
    raise exception '% must be 1 to 200 characters of letters, digits and _ . : / @ + - (got %)',
      field, left(pg_catalog.quote_literal(value), 60)
      using errcode = '22023', detail = pg_catalog.json_build_object('field', field)::text;
  end if;
  return true;
end;
$$;
comment on function private.assert_model_cap(text, text) is
  'Check helper: a model name of at most 200 characters of [a-z0-9_.:/@+-], else 22023.';
revoke execute on function private.assert_model_cap(text, text) from public;
grant execute on function private.assert_model_cap(text, text) to authenticated, service_role;

-- Tags, metadata and the call's time: what a usage-log row carries besides identifiers.
-- Stable, not immutable: occurred_at is compared with now(). A row in the past stays valid.
create or replace function private.assert_usage_caps(tags text[], metadata jsonb, occurred_at timestamptz)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
declare
  tag text;
begin
  if cardinality(tags) > 64 then
    raise exception 'tags: at most 64 tags (got %)', cardinality(tags)
      using errcode = '22023', detail = '{"field": "tags"}';
  end if;
  foreach tag in array coalesce(tags, '{}') loop
    perform private.assert_text_cap('tags', tag, 100);
  end loop;
  if metadata is not null and pg_catalog.jsonb_typeof(metadata) <> 'object' then
    raise exception 'metadata must be a JSON object' using errcode = '22023',
      detail = '{"field": "metadata"}';
  end if;
  if pg_catalog.octet_length(metadata::text) > 16384 then
    raise exception 'metadata must be at most 16384 bytes as JSON (got %)',
      pg_catalog.octet_length(metadata::text)
      using errcode = '22023', detail = '{"field": "metadata"}';
  end if;
  if occurred_at > now() + interval '5 minutes' or occurred_at < '2000-01-01T00:00:00Z' then
    raise exception 'occurred_at % is not between 2000 and 5 minutes from now', occurred_at
      using errcode = '22023', detail = '{"field": "occurred_at"}';
  end if;
  return true;
end;
$$;
comment on function private.assert_usage_caps(text[], jsonb, timestamptz) is
  'Check helper: at most 64 tags of 1..100 characters, metadata an object of at most 16 KiB, occurred_at from 2000 to now() + 5 minutes; else 22023.';
revoke execute on function private.assert_usage_caps(text[], jsonb, timestamptz) from public;
grant execute on function private.assert_usage_caps(text[], jsonb, timestamptz) to service_role;

-- =====================================================================
-- The caps on the tables
-- =====================================================================

alter table public.api_usage_logs add constraint api_usage_logs_input_caps check (
  private.assert_text_cap('request_id', request_id)
  and private.assert_text_cap('user_id', user_id)
  and private.assert_text_cap('session_id', session_id)
  and private.assert_text_cap('workflow_id', workflow_id)
  and private.assert_text_cap('conversation_id', conversation_id)
  and private.assert_model_cap('model', model)
  and private.assert_usage_caps(tags, metadata, occurred_at)
) not valid;

alter table public.quota_reservations add constraint quota_reservations_input_caps check (
  private.assert_text_cap('request_id', request_id)
  and private.assert_text_cap('user_id', user_id)
  and private.assert_model_cap('model', model)
) not valid;

alter table public.usage_quotas add constraint usage_quotas_input_caps check (
  private.assert_text_cap('user_id', user_id)
  and private.assert_text_cap('name', name)
  and private.assert_model_cap('model', model)
) not valid;
