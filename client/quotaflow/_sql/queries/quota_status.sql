-- Quota status: every quota of the organization as it stands now.
-- Limit, settled usage, reserved (pending calls), remaining, percent used, and the current
-- window with its reset time (get_quota_status).
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> -f sql/queries/quota_status.sql
-- Columns: quota_id, name, quota_type, metric, enforcement, user_id, provider, model, quota_limit,
--         current_usage, reserved, remaining, percent_used, window_start, reset_at, time_zone

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif

select q.quota_id, q.name, q.quota_type, q.metric, q.enforcement, q.user_id, q.provider, q.model,
       q.quota_limit, q.current_usage, q.reserved, q.remaining, q.percent_used,
       q.window_start, q.reset_at, q.time_zone
from public.get_quota_status(:'org_id') q;
