-- Model performance (seed 003).
-- Per provider and model over [start_at, end_at) (default: the last 30 days): requests, error
-- rate (0-1), latency in ms (average, median, 95th percentile), tokens and cost per call.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v start_at=<timestamptz>] [-v end_at=<timestamptz>] -f sql/queries/model_performance.sql
-- Columns: provider, model, requests, successful_requests, failed_requests, error_rate,
--         avg_latency_ms, p50_latency_ms, p95_latency_ms, avg_input_tokens, avg_output_tokens,
--         total_tokens, cost_usd, avg_cost_usd, cost_display

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

select m.provider, m.model, m.requests, m.successful_requests, m.failed_requests, m.error_rate,
       m.avg_latency_ms, m.p50_latency_ms, m.p95_latency_ms,
       m.avg_input_tokens, m.avg_output_tokens,
       m.total_tokens, m.cost_usd, m.avg_cost_usd, m.cost_display
from public.model_performance(
  :'org_id',
  coalesce(nullif(:'start_at', '')::timestamptz, now() - interval '30 days'),
  coalesce(nullif(:'end_at', '')::timestamptz, now())
) m;
