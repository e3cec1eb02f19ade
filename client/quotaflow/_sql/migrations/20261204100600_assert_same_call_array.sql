-- private.assert_same_call as in 20261202100100_request_id_conflicts.sql, its conflict list
-- initialised with an array rather than a text literal (plpgsql_check, 42804).

create or replace function private.assert_same_call(
  request_id text, state text,
  old_provider text, old_model text, old_user text,
  new_provider text, new_model text, new_user text
)
returns void
language plpgsql
immutable
set search_path = ''
as $$
declare
  conflicts text[] := array[]::text[];
begin
  if old_provider is distinct from new_provider then conflicts := conflicts || 'provider'::text; end if;
  if old_model is distinct from new_model then conflicts := conflicts || 'model'::text; end if;
  if old_user is distinct from new_user then conflicts := conflicts || 'user_id'::text; end if;
  if cardinality(conflicts) > 0 then
    raise exception 'request_id % was already % with different %', request_id, state,
                    pg_catalog.array_to_string(conflicts, ', ')
      using errcode = 'QF003',
            detail = pg_catalog.json_build_object('request_id', request_id, 'fields', conflicts)::text,
            hint = 'use a new request_id for a new call; retry a call only unchanged';
  end if;
end;
$$;
comment on function private.assert_same_call(text, text, text, text, text, text, text, text) is
  'Raises QF003 when a request_id already used by one call (provider, model, user) is reused by another.';
revoke execute on function private.assert_same_call(text, text, text, text, text, text, text, text) from public, anon, authenticated;
