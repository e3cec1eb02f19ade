-- Usage by tag.
-- Requests, tokens and cost per tag over [start_at, end_at) (default: the last 30 days),
-- most expensive first; cost_display is in the organization's display currency.
-- Tags are the modules/features of seed 003 (Chat, ENEM, ...): a call with several tags counts
-- under each; untagged calls are one row with tag null.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v start_at=<timestamptz>] [-v end_at=<timestamptz>] -f sql/queries/usage_by_tag.sql
-- Columns: tag, requests, successful_requests, failed_requests, input_tokens, output_tokens,
--         total_tokens, cost_usd, credits, cost_display, avg_cost_usd, avg_latency_ms,
--         last_used_at

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

select d.key as tag,
       d.requests, d.successful_requests, d.failed_requests,
       d.input_tokens, d.output_tokens, d.total_tokens,
       d.cost_usd, d.credits, d.cost_display, d.avg_cost_usd, d.avg_latency_ms, d.last_used_at
from public.usage_by_dimension(
  :'org_id', 'tag',
  coalesce(nullif(:'start_at', '')::timestamptz, now() - interval '30 days'),
  coalesce(nullif(:'end_at', '')::timestamptz, now())
) d;
