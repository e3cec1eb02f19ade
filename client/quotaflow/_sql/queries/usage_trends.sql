-- Usage trends over the last N days (default 30; seed 003's trends).
-- One row per local day, today included, with the change from the previous day, the trailing
-- 7-day average and the running total of cost (USD).
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v days=<N>] -f sql/queries/usage_trends.sql
-- Columns: day, requests, failed_requests, error_rate, total_tokens, cost_usd, credits,
--         cost_display, cost_usd_change, cost_usd_7d_avg, cumulative_cost_usd

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif
\if :{?days}
\else
  \set days 30
\endif

select t.day, t.requests, t.failed_requests, t.error_rate, t.total_tokens, t.cost_usd,
       t.credits, t.cost_display, t.cost_usd_change, t.cost_usd_7d_avg, t.cumulative_cost_usd
from public.usage_trends(:'org_id', :days) t;
