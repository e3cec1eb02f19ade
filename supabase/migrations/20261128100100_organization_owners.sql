-- quotaflow: an organization always keeps an owner.
--
-- Removing or demoting an organization's last owner would leave it without anyone who may
-- manage its members. The rule is a trigger, so every path obeys it: owners through RLS
-- (PostgREST, supabase-py), the service role, the `quotaflow member` commands and plain SQL.
-- Deleting the organization itself (its members go with it) is allowed; deleting the auth user
-- who is an organization's last owner is refused until someone else owns it.

-- =====================================================================
-- organization_members: the last owner stays
-- =====================================================================

-- After a member row is deleted, or updated away from owner (or moved to another
-- organization): refuses the change (23514) when the organization still exists and has no
-- owner left. The organization row is locked first, so two transactions that each remove one
-- of the last two owners run one after the other and the second is refused (at the default
-- read committed isolation, which PostgREST and quotaflow use). Security definer: the count
-- must see every member, whatever the caller's RLS lets it read.
create or replace function private.organization_members_keep_an_owner()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if old.role <> 'owner'
     or (tg_op = 'UPDATE' and new.role = 'owner' and new.organization_id = old.organization_id) then
    return null;
  end if;
  perform 1 from public.organizations o where o.id = old.organization_id for update;
  if not found then
    return null;  -- the organization is being deleted with its members
  end if;
  if not exists (
    select 1 from public.organization_members m
    where m.organization_id = old.organization_id and m.role = 'owner'
  ) then
    raise exception 'organization % must keep an owner: % is its last one', old.organization_id, old.user_id
      using errcode = '23514',
            hint = 'make another member an owner first, or delete the organization';
  end if;
  return null;
end;
$$;
comment on function private.organization_members_keep_an_owner() is
  'Trigger: refuses removing or demoting the last owner of an organization (23514).';
revoke execute on function private.organization_members_keep_an_owner() from public;

create trigger organization_members_keep_an_owner
  after update of role, organization_id or delete on public.organization_members
  for each row execute function private.organization_members_keep_an_owner();
