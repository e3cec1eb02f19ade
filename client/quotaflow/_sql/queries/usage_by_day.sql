-- Usage by day (spend per day).
-- One row per calendar day of [start_at, end_at) (default: the last 30 days) in the
-- organization's time zone, or in -v time_zone=<IANA name>; days without calls included.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v start_at=<timestamptz>] [-v end_at=<timestamptz>] [-v time_zone=<IANA name>] -f sql/queries/usage_by_day.sql
-- Columns: day, requests, successful_requests, failed_requests, input_tokens, output_tokens,
--         total_tokens, cost_usd, credits, cost_display, avg_latency_ms

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
\if :{?time_zone}
\else
  \set time_zone ''
\endif

select d.day, d.requests, d.successful_requests, d.failed_requests, d.input_tokens, d.output_tokens,
       d.total_tokens, d.cost_usd, d.credits, d.cost_display, d.avg_latency_ms
from public.usage_by_day(
  :'org_id',
  coalesce(nullif(:'start_at', '')::timestamptz, now() - interval '30 days'),
  coalesce(nullif(:'end_at', '')::timestamptz, now()),
  nullif(:'time_zone', '')
) d;
