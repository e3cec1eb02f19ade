-- quotaflow: settle many usage events in one round trip.
--
-- Used by the client's outbox when it replays events the database missed, and for bulk
-- import. Each event is settled by record_usage in its own subtransaction, so every event
-- stays idempotent by request_id and atomic with its quotas, and one bad event does not
-- sink the batch: its error is returned in its row instead.

-- Settles a JSON array of events (the keys are record_usage's parameter names; usage may also
-- be nested as {"usage": {"input_tokens": ...}}). Returns one row per event, in input order:
-- the record_usage result, or the event's errcode and message.
create or replace function public.record_usage_batch(events jsonb)
returns table (
  idx integer,
  request_id text,
  log_id uuid,
  cost_usd numeric,
  credits numeric,
  price_id bigint,
  duplicate boolean,
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
                          r.duplicate, null::text, null::text;
    exception when others then
      return query select i, e ->> 'request_id', null::uuid, null::numeric, null::numeric,
                          null::bigint, null::boolean, sqlstate::text, sqlerrm::text;
    end;
    i := i + 1;
  end loop;
end;
$$;
comment on function public.record_usage_batch(jsonb) is
  'Settles a JSON array of usage events, each idempotent and atomic on its own; one result row per event.';
revoke execute on function public.record_usage_batch(jsonb) from public, anon, authenticated;
grant execute on function public.record_usage_batch(jsonb) to service_role;
