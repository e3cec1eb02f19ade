-- quotaflow: quota alerts — warned before the money runs out.
--
-- Each quota has alert thresholds (fractions of its limit, default 80% and 100%). When a
-- quota's settled usage (current_usage) reaches threshold * quota_limit, one row is written to
-- quota_alerts — once per threshold per window, however many calls cross it at the same time —
-- and announced with pg_notify on the channel 'quotaflow_alerts' (delivered on commit), which
-- the Python client's AlertListener turns into on_alert callbacks.
--
-- Alerts are recorded by a trigger on usage_quotas, so record_usage (which charges quotas
-- under their row lock) and admins lowering a limit both raise them, and nothing else changes.

-- =====================================================================
-- usage_quotas.alert_thresholds
-- =====================================================================
alter table public.usage_quotas
  add column alert_thresholds numeric[] not null default '{0.8,1.0}'
    constraint usage_quotas_alert_thresholds_valid check (
      cardinality(alert_thresholds) <= 10
      and array_position(alert_thresholds, null) is null
      and 0 < all (alert_thresholds)
      and 100 >= all (alert_thresholds)
    );
comment on column public.usage_quotas.alert_thresholds is
  'Fractions of quota_limit at which an alert is recorded once per window ({0.8,1.0} = 80% and 100%); empty = no alerts.';

-- Thresholds are the admins' to set, like the limit itself.
grant insert (alert_thresholds), update (alert_thresholds) on public.usage_quotas to authenticated;

-- =====================================================================
-- quota_alerts
-- =====================================================================
create table public.quota_alerts (
  id bigint generated always as identity primary key,
  quota_id uuid not null references public.usage_quotas (id) on delete cascade,
  organization_id uuid not null references public.organizations (id) on delete cascade,
  window_start timestamptz not null,
  reset_at timestamptz,
  threshold numeric not null,
  quota_type text not null,
  metric text not null,
  quota_limit numeric not null,
  usage numeric not null,
  created_at timestamptz not null default now(),
  constraint quota_alerts_once_per_window unique (quota_id, window_start, threshold)
);
comment on table public.quota_alerts is
  'One row per quota, window and threshold crossed: when settled usage first reached threshold * quota_limit.';
comment on column public.quota_alerts.window_start is 'Start of the quota window (period) in which the threshold was crossed.';
comment on column public.quota_alerts.reset_at is 'When that window ends (null for total quotas).';
comment on column public.quota_alerts.threshold is 'The fraction of the limit crossed (0.8 = 80%).';
comment on column public.quota_alerts.usage is 'The quota''s current_usage right after the crossing call was charged.';
comment on column public.quota_alerts.quota_limit is 'The limit in force at the crossing.';

create index quota_alerts_organization_id_idx on public.quota_alerts (organization_id, created_at desc);

alter table public.quota_alerts enable row level security;

create policy "members read their organization's alerts" on public.quota_alerts
  for select to authenticated
  using ((select private.has_org_role(organization_id)));

-- Written only by the trigger below.
revoke all on public.quota_alerts from anon, authenticated;
grant select on public.quota_alerts to authenticated;
grant all on public.quota_alerts to service_role;

-- =====================================================================
-- Recording crossings
-- =====================================================================

-- After a quota's usage, limit or thresholds change: for every threshold the new usage
-- reaches (and the old state of the same window did not), insert the alert unless this window
-- already has it, and announce each inserted alert. The unique constraint makes a crossing
-- count once even if two transactions raced (record_usage already serializes them with the
-- quota's row lock). Security definer: the updater (an admin lowering a limit) cannot write
-- quota_alerts itself.
create or replace function private.usage_quotas_record_alerts()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  t numeric;
  same_window boolean := old.window_start = new.window_start;
  alert public.quota_alerts;
begin
  if new.current_usage <= 0 or cardinality(new.alert_thresholds) = 0 then
    return null;
  end if;
  foreach t in array new.alert_thresholds loop
    continue when new.current_usage < t * new.quota_limit;
    -- Already at or past this threshold before, with the same limit and thresholds: the
    -- crossing (if any) was recorded then.
    continue when same_window
      and old.current_usage >= t * old.quota_limit
      and old.quota_limit = new.quota_limit
      and t = any (old.alert_thresholds);
    insert into public.quota_alerts as a
      (quota_id, organization_id, window_start, reset_at, threshold, quota_type, metric,
       quota_limit, usage)
    values
      (new.id, new.organization_id, new.window_start, new.reset_at, t, new.quota_type,
       new.metric, new.quota_limit, new.current_usage)
    on conflict on constraint quota_alerts_once_per_window do nothing
    returning a.* into alert;
    if alert.id is not null then
      perform pg_catalog.pg_notify('quotaflow_alerts', pg_catalog.json_build_object(
        'alert_id', alert.id,
        'quota_id', alert.quota_id,
        'organization_id', alert.organization_id,
        'quota_name', new.name,
        'quota_type', alert.quota_type,
        'metric', alert.metric,
        'enforcement', new.enforcement,
        'user_id', new.user_id,
        'provider', new.provider,
        'model', new.model,
        'threshold', alert.threshold,
        'quota_limit', alert.quota_limit,
        'usage', alert.usage,
        'window_start', alert.window_start,
        'reset_at', alert.reset_at,
        'created_at', alert.created_at
      )::text);
    end if;
    alert := null;
  end loop;
  return null;
end;
$$;
revoke execute on function private.usage_quotas_record_alerts() from public;

create trigger usage_quotas_record_alerts
  after update of current_usage, quota_limit, alert_thresholds on public.usage_quotas
  for each row
  when (new.current_usage > 0 and (new.current_usage > old.current_usage
                                   or new.quota_limit < old.quota_limit
                                   or new.alert_thresholds is distinct from old.alert_thresholds
                                   or new.window_start is distinct from old.window_start))
  execute function private.usage_quotas_record_alerts();
