-- quotaflow: alert notifications carry no tenant data.
--
-- Any role may LISTEN on any channel: `LISTEN quotaflow_alerts` as anon received every
-- organization's alerts with quota names, limits and usage. The notification now carries only
-- opaque ids (quota_id, organization_id); listeners (quotaflow.reports.AlertListener) re-read
-- the alert rows from public.quota_alerts, where RLS shows each role only its organizations'.
--
-- The trigger function is replaced whole; the only change from the alerts migration is the
-- pg_notify payload (marked below). Whoever replaces private.usage_quotas_record_alerts later
-- (e.g. delivery rows, issue 14) keeps this payload.

-- =====================================================================
-- Recording crossings
-- =====================================================================

-- After a quota's usage, limit or thresholds change: for every threshold the new usage
-- reaches (and the old state of the same window did not), insert the alert unless this window
-- already has it, and announce each inserted alert. The unique constraint makes a crossing
-- count once even if two transactions raced (record_usage already serializes them with the
-- quota's row lock). Security definer: the updater (an admin lowering a limit) cannot write
-- quota_alerts itself. The notification carries only the quota's and organization's ids.
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
      -- Only opaque ids (issue 13): any role may LISTEN on any channel, so the names, limits
      -- and usage are re-read from quota_alerts, where RLS decides who sees them.
      perform pg_catalog.pg_notify('quotaflow_alerts', pg_catalog.json_build_object(
        'quota_id', alert.quota_id,
        'organization_id', alert.organization_id
      )::text);
    end if;
    alert := null;
  end loop;
  return null;
end;
$$;
revoke execute on function private.usage_quotas_record_alerts() from public;
