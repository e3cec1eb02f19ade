-- Quota alerts: thresholds crossed, newest first.
-- One row per quota, window and threshold crossed (80% and 100% by default) since -v since
-- (default: 30 days ago); threshold_percent is 80.00 for 0.8.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v since=<timestamptz>] -f sql/queries/quota_alerts.sql
-- Columns: created_at, quota_id, quota_name, quota_type, metric, threshold_percent, usage,
--         quota_limit, window_start, reset_at

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif
\if :{?since}
\else
  \set since ''
\endif

select a.created_at, a.quota_id, q.name as quota_name, a.quota_type, a.metric,
       round(100 * a.threshold, 2) as threshold_percent, a.usage, a.quota_limit,
       a.window_start, a.reset_at
from public.quota_alerts a
join public.usage_quotas q on q.id = a.quota_id
where a.organization_id = :'org_id'
  and a.created_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '30 days')
order by a.created_at desc, a.id desc;
