-- quotaflow: organizations and their members.
--
-- Every other table belongs to an organization. Membership (organization_members.user_id) is a
-- Supabase auth user with a role; the app's own end users (who need not be Supabase users) are
-- plain text identifiers on logs and quotas, see the usage migration.

-- =====================================================================
-- Private schema: helpers that RLS policies and security-definer functions use. Not exposed
-- through the API (not in config.toml's api.schemas).
-- =====================================================================
create schema if not exists private;
revoke all on schema private from public;
grant usage on schema private to authenticated, service_role;

-- Validates an IANA time zone name; raises 22023 for anything Postgres cannot use.
create or replace function private.assert_time_zone(tz text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  if tz is null or tz = '' then
    raise exception 'time zone must not be empty' using errcode = '22023';
  end if;
  perform now() at time zone tz;
  return tz;
exception
  when invalid_parameter_value then
    raise exception 'invalid time zone: %', tz using errcode = '22023',
      hint = 'use an IANA name such as Europe/Berlin or America/Sao_Paulo';
end;
$$;
revoke execute on function private.assert_time_zone(text) from public;
grant execute on function private.assert_time_zone(text) to authenticated, service_role;

-- =====================================================================
-- organizations
-- =====================================================================
create table public.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(trim(name)) between 1 and 200),
  time_zone text not null default 'UTC',
  credits_per_usd numeric not null default 1000 check (credits_per_usd >= 0),
  display_currency text check (display_currency ~ '^[A-Z]{3}$'),
  created_at timestamptz not null default now(),
  constraint organizations_time_zone_valid check (private.assert_time_zone(time_zone) is not null)
);
comment on table public.organizations is
  'A tenant: owns usage logs, quotas and reservations. Quotas default to its time zone.';
comment on column public.organizations.credits_per_usd is
  'How many credits one US dollar of usage costs; every log row carries cost_usd * credits_per_usd.';
comment on column public.organizations.display_currency is
  'ISO 4217 code reports may convert to (USD is always reported).';

alter table public.organizations enable row level security;

-- =====================================================================
-- organization_members
-- =====================================================================
create table public.organization_members (
  organization_id uuid not null references public.organizations (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null default 'member' check (role in ('owner', 'admin', 'member')),
  created_at timestamptz not null default now(),
  primary key (organization_id, user_id)
);
comment on table public.organization_members is
  'Supabase auth users who may see an organization''s data; owners/admins also manage quotas.';
create index organization_members_user_id_idx on public.organization_members (user_id);

alter table public.organization_members enable row level security;

-- True when the current auth user is a member of the organization with one of the roles.
-- Security definer so policies on organization_members can use it without recursing into RLS.
create or replace function private.has_org_role(org_id uuid, roles text[] default null)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1
    from public.organization_members m
    where m.organization_id = org_id
      and m.user_id = (select auth.uid())
      and (roles is null or m.role = any (roles))
  );
$$;
revoke execute on function private.has_org_role(uuid, text[]) from public;
grant execute on function private.has_org_role(uuid, text[]) to authenticated, service_role;

-- Raises 42501 unless an API caller (anon, authenticated) is a member of the organization;
-- the service role and the database owner pass. Used by the read functions (quota status,
-- reports) that answer about one organization.
create or replace function private.assert_member(org uuid)
returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if org is null then
    raise exception 'organization_id must not be null' using errcode = '22004';
  end if;
  if current_user in ('anon', 'authenticated') and not private.has_org_role(org) then
    raise exception 'not a member of organization %', org using errcode = '42501';
  end if;
end;
$$;
revoke execute on function private.assert_member(uuid) from public;
grant execute on function private.assert_member(uuid) to authenticated, service_role;

-- ---- policies: organizations ----
create policy "members read their organizations" on public.organizations
  for select to authenticated
  using ((select private.has_org_role(id)));

create policy "owners and admins update their organization" on public.organizations
  for update to authenticated
  using ((select private.has_org_role(id, array['owner', 'admin'])))
  with check ((select private.has_org_role(id, array['owner', 'admin'])));

-- ---- policies: organization_members ----
create policy "members read their organization's members" on public.organization_members
  for select to authenticated
  using ((select private.has_org_role(organization_id)));

create policy "owners add members" on public.organization_members
  for insert to authenticated
  with check ((select private.has_org_role(organization_id, array['owner'])));

create policy "owners change members" on public.organization_members
  for update to authenticated
  using ((select private.has_org_role(organization_id, array['owner'])))
  with check ((select private.has_org_role(organization_id, array['owner'])));

create policy "owners remove members" on public.organization_members
  for delete to authenticated
  using ((select private.has_org_role(organization_id, array['owner'])));

-- ---- grants ----
-- Supabase grants all on new public tables to anon/authenticated by default; narrow it.
revoke all on public.organizations, public.organization_members from anon, authenticated;
grant select on public.organizations to authenticated;
grant update (name, time_zone, display_currency) on public.organizations to authenticated;
grant select, insert, delete on public.organization_members to authenticated;
grant update (role) on public.organization_members to authenticated;
grant all on public.organizations, public.organization_members to service_role;
