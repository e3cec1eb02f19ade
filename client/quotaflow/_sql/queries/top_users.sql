-- Top users by cost.
-- The -v limit=<N> (default 10) app users who spent most over [start_at, end_at) (default: the
-- last 30 days); cost_share is their fraction (0-1) of the organization's cost.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v start_at=<timestamptz>] [-v end_at=<timestamptz>] [-v limit=<N>] -f sql/queries/top_users.sql
-- Columns: rank, user_id, requests, failed_requests, total_tokens, cost_usd, credits,
--         cost_display, cost_share, last_used_at

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif
\if :{?start_at}
\else
  \set start_at ''
\endif
\if :{?end_at}
\else
  \set end_at ''
\endif
\if :{?limit}
\else
  \set limit 10
\endif

select u.rank, u.user_id, u.requests, u.failed_requests, u.total_tokens,
       u.cost_usd, u.credits, u.cost_display, u.cost_share, u.last_used_at
from public.top_users(
  :'org_id',
  coalesce(nullif(:'start_at', '')::timestamptz, now() - interval '30 days'),
  coalesce(nullif(:'end_at', '')::timestamptz, now()),
  :limit
) u;
