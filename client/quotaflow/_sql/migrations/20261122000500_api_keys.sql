-- quotaflow: organization API keys for server-to-server callers of the HTTP functions.
--
-- A key is `qf_` followed by 43 url-safe characters (32 random bytes, 256 bits), made by the
-- client (`quotaflow keys create`), shown once and stored here only as its SHA-256 hex digest.
-- A fast unsalted hash is enough because the key is not a password: with 256 bits of entropy
-- there is nothing to guess or to precompute, so a slow KDF (bcrypt, argon2) would add CPU to
-- every request and protect nothing; and an unsalted digest can be looked up by a unique index
-- in one probe. The plaintext never reaches the database, not even in a function argument.
--
-- A key belongs to one organization and authorizes only it; revoking is immediate and final.
-- Writes happen only through the security-definer functions below, granted to service_role
-- (the HTTP functions and the CLI); owners and admins may read their keys' metadata, never the
-- hashes.

-- =====================================================================
-- api_keys
-- =====================================================================
create table public.api_keys (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  name text not null check (length(trim(name)) between 1 and 200),
  key_prefix text not null check (key_prefix ~ '^qf_[A-Za-z0-9_-]{4,16}$'),
  key_hash text not null check (key_hash ~ '^[0-9a-f]{64}$'),
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  last_used_at timestamptz,
  revoked_at timestamptz,
  constraint api_keys_hash_unique unique (key_hash),
  constraint api_keys_expiry_after_creation check (expires_at is null or expires_at > created_at)
);
comment on table public.api_keys is
  'Organization API keys (qf_...): stored only as SHA-256 digests; each authorizes one organization.';
comment on column public.api_keys.key_prefix is
  'The first characters of the key (qf_ and 8 more), shown in listings to tell keys apart.';
comment on column public.api_keys.key_hash is
  'Hex SHA-256 of the whole key. Never readable by authenticated users (column not granted).';
comment on column public.api_keys.last_used_at is
  'Last successful verification, updated at most once a minute per key.';
comment on column public.api_keys.revoked_at is 'Set by revoke_api_key; a revoked key never verifies again.';

create index api_keys_organization_id_idx on public.api_keys (organization_id);

alter table public.api_keys enable row level security;

create policy "owners and admins read their organization's keys" on public.api_keys
  for select to authenticated
  using ((select private.has_org_role(organization_id, array['owner', 'admin'])));

-- Metadata only: the hash column is not granted, so even an owner cannot select it.
revoke all on public.api_keys from anon, authenticated, service_role;
grant select (id, organization_id, name, key_prefix, created_at, expires_at, last_used_at, revoked_at)
  on public.api_keys to authenticated;
grant select on public.api_keys to service_role;

-- =====================================================================
-- create_api_key / revoke_api_key / verify_api_key
-- =====================================================================

-- Registers a key the caller generated, given its SHA-256 hex digest and display prefix.
-- Returns the new key's id. QF004 for an unknown organization, 22023 for a malformed digest.
create or replace function public.create_api_key(
  organization_id uuid,
  name text,
  key_hash text,
  key_prefix text,
  expires_at timestamptz default null
)
returns uuid
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  new_id uuid;
begin
  if organization_id is null then
    raise exception 'organization_id must not be null' using errcode = '22004';
  end if;
  if name is null or length(trim(name)) not between 1 and 200 then
    raise exception 'name must be 1 to 200 characters' using errcode = '22023';
  end if;
  if key_hash is null or key_hash !~ '^[0-9a-f]{64}$' then
    raise exception 'key_hash must be a lowercase hex SHA-256 digest' using errcode = '22023';
  end if;
  if key_prefix is null or key_prefix !~ '^qf_[A-Za-z0-9_-]{4,16}$' then
    raise exception 'key_prefix must be qf_ followed by 4 to 16 key characters' using errcode = '22023';
  end if;
  if expires_at is not null and expires_at <= now() then
    raise exception 'expires_at must be in the future' using errcode = '22023';
  end if;
  if not exists (select 1 from public.organizations o where o.id = organization_id) then
    raise exception 'unknown organization %', organization_id using errcode = 'QF004';
  end if;
  insert into public.api_keys as k (organization_id, name, key_hash, key_prefix, expires_at)
  values (organization_id, trim(name), key_hash, key_prefix, expires_at)
  returning k.id into new_id;
  return new_id;
end;
$$;
comment on function public.create_api_key(uuid, text, text, text, timestamptz) is
  'Registers an organization API key by its SHA-256 digest; returns the key id.';
revoke execute on function public.create_api_key(uuid, text, text, text, timestamptz) from public, anon, authenticated;
grant execute on function public.create_api_key(uuid, text, text, text, timestamptz) to service_role;

-- Revokes a key; when organization_id is given the key must belong to it. True when the key
-- was active and is now revoked, false when it was unknown or already revoked.
create or replace function public.revoke_api_key(key_id uuid, organization_id uuid default null)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
begin
  if key_id is null then
    raise exception 'key_id must not be null' using errcode = '22004';
  end if;
  update public.api_keys k
     set revoked_at = now()
   where k.id = key_id
     and (organization_id is null or k.organization_id = organization_id)
     and k.revoked_at is null;
  return found;
end;
$$;
comment on function public.revoke_api_key(uuid, uuid) is
  'Revokes an API key at once; false when it was unknown (in that organization) or already revoked.';
revoke execute on function public.revoke_api_key(uuid, uuid) from public, anon, authenticated;
grant execute on function public.revoke_api_key(uuid, uuid) to service_role;

-- The key and organization a presented key's digest belongs to, if the key is active (not
-- revoked, not expired); no row otherwise. Records last use at most once a minute, so a busy
-- key does not turn every request into a row update.
create or replace function public.verify_api_key(key_hash text)
returns table (key_id uuid, organization_id uuid)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  k public.api_keys;
begin
  if key_hash is null or key_hash !~ '^[0-9a-f]{64}$' then
    return;
  end if;
  select * into k from public.api_keys a
   where a.key_hash = key_hash
     and a.revoked_at is null
     and (a.expires_at is null or a.expires_at > now());
  if not found then
    return;
  end if;
  if k.last_used_at is null or k.last_used_at < now() - interval '1 minute' then
    update public.api_keys a set last_used_at = now()
     where a.id = k.id
       and (a.last_used_at is null or a.last_used_at < now() - interval '1 minute');
  end if;
  return query select k.id, k.organization_id;
end;
$$;
comment on function public.verify_api_key(text) is
  'The key id and organization of an active API key, by the SHA-256 digest of the presented key.';
revoke execute on function public.verify_api_key(text) from public, anon, authenticated;
grant execute on function public.verify_api_key(text) to service_role;
