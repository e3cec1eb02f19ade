-- Usage by organization (the operator's view across tenants).
-- Totals per organization over [start_at, end_at) (default: the last 30 days), most expensive
-- first. As the service role (or postgres): every organization; as a member: theirs.
--
-- Run:     psql "$DATABASE_URL" [-v start_at=<timestamptz>] [-v end_at=<timestamptz>] -f sql/queries/usage_by_organization.sql
-- Columns: organization_id, name, requests, failed_requests, total_tokens, cost_usd, credits,
--         display_currency, cost_display

\if :{?start_at}
\else
  \set start_at ''
\endif
\if :{?end_at}
\else
  \set end_at ''
\endif

select o.organization_id, o.name, o.requests, o.failed_requests, o.total_tokens,
       o.cost_usd, o.credits, o.display_currency, o.cost_display
from public.usage_by_organization(
  coalesce(nullif(:'start_at', '')::timestamptz, now() - interval '30 days'),
  coalesce(nullif(:'end_at', '')::timestamptz, now())
) o;
