-- Check quota: would a call of this estimated cost be admitted? (read-only)
-- One row per quota that applies to the call, binding ones first; no rows = no quota applies.
-- The seed's debugging query: select * from check_quota('<org-id>', 'openai', 'gpt-4', 0.01).
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> -v provider=openai -v model=gpt-4o -v estimated_cost=0.01 [-v user_id=<id>] -f sql/queries/check_quota.sql
-- Columns: allowed, quota_limit, current_usage, remaining, quota_type, quota_id, metric,
--         enforcement, reserved, reset_at

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif
\if :{?user_id}
\else
  \set user_id ''
\endif

select c.allowed, c.quota_limit, c.current_usage, c.remaining, c.quota_type,
       c.quota_id, c.metric, c.enforcement, c.reserved, c.reset_at
from public.check_quota(
  :'org_id', :'provider', :'model', (:'estimated_cost')::numeric, nullif(:'user_id', '')
) c;
