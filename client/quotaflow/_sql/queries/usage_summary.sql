-- Usage summary: one row of totals (default: the last 30 days).
-- Requests (successful, failed), tokens of each kind, cost in USD, credits, cost in the
-- organization's display currency (null when a rate is missing), average cost and latency.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v start_at=<timestamptz>] [-v end_at=<timestamptz>] -f sql/queries/usage_summary.sql
-- Columns: period_start, period_end, requests, successful_requests, failed_requests, input_tokens,
--         output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, total_tokens,
--         cost_usd, credits, display_currency, cost_display, avg_cost_usd, avg_latency_ms

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

select s.period_start, s.period_end, s.requests, s.successful_requests, s.failed_requests,
       s.input_tokens, s.output_tokens, s.cached_input_tokens, s.cache_write_tokens,
       s.reasoning_tokens, s.total_tokens,
       s.cost_usd, s.credits, s.display_currency, s.cost_display, s.avg_cost_usd, s.avg_latency_ms
from public.usage_summary(
  :'org_id',
  coalesce(nullif(:'start_at', '')::timestamptz, now() - interval '30 days'),
  coalesce(nullif(:'end_at', '')::timestamptz, now())
) s;
