-- What a plain PostgreSQL needs to look like a Supabase project, so the migrations in
-- supabase/migrations apply and behave as they would there. NEVER apply this to a real
-- Supabase project: it already has all of it.
--
-- Idempotent: safe to run on every test database (roles are cluster-wide).

-- ===== Roles =====
-- Roles are cluster-wide, so parallel test runs may race here: a role created by another
-- session between the check and the create is fine (duplicate_object / unique_violation).
do $$
declare
  r record;
begin
  for r in
    select * from (values
      ('anon', 'nologin noinherit'),
      ('authenticated', 'nologin noinherit'),
      ('service_role', 'nologin noinherit bypassrls'),
      ('authenticator', 'login noinherit'),
      ('supabase_admin', 'nologin')
    ) as t(rolname, attrs)
  loop
    if not exists (select 1 from pg_catalog.pg_roles where rolname = r.rolname) then
      begin
        execute format('create role %I %s', r.rolname, r.attrs);
      exception when duplicate_object or unique_violation then
        null;
      end;
    end if;
  end loop;
end
$$;

grant anon, authenticated, service_role to authenticator;
-- The database owner (postgres) switches into the API roles in tests, as PostgREST does.
grant anon, authenticated, service_role to postgres;

-- ===== Schemas =====
create schema if not exists extensions;
create schema if not exists auth;
grant usage on schema extensions to anon, authenticated, service_role;
grant usage on schema auth to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;

create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;

-- ===== auth =====
-- The columns of Supabase's auth.users that application code commonly reads (triggers on
-- signup, RLS helpers); GoTrue's internal columns are left out.
create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key default gen_random_uuid(),
  aud varchar(255) default 'authenticated',
  role varchar(255) default 'authenticated',
  email varchar(255) unique,
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb not null default '{}',
  raw_user_meta_data jsonb not null default '{}',
  is_super_admin boolean,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  phone text unique,
  is_sso_user boolean not null default false,
  deleted_at timestamptz,
  is_anonymous boolean not null default false
);

-- Exactly as Supabase defines them: PostgREST puts the verified JWT's claims in the
-- transaction-local setting request.jwt.claims (older versions: request.jwt.claim.<name>).
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt(), auth.email()
  to anon, authenticated, service_role;

-- ===== Default privileges as on Supabase =====
-- Supabase grants everything in public to the API roles by default and relies on RLS and
-- explicit revokes; migrations must therefore revoke what they do not want exposed.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
