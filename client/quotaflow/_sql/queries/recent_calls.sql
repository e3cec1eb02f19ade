-- Recent calls, failures marked.
-- The last -v limit=<N> (default 50) calls of the organization, newest first; status is ok
-- or FAILED.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> [-v limit=<N>] -f sql/queries/recent_calls.sql
-- Columns: occurred_at, request_id, user_id, provider, model, input_tokens, output_tokens,
--         cost_usd, credits, latency_ms, status, error_code, error_message

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif
\if :{?limit}
\else
  \set limit 50
\endif

select l.occurred_at, l.request_id, l.user_id, l.provider, l.model, l.input_tokens,
       l.output_tokens, l.cost_usd, l.credits, l.latency_ms,
       case when l.success then 'ok' else 'FAILED' end as status,
       l.error_code, l.error_message
from public.api_usage_logs l
where l.organization_id = :'org_id'
order by l.occurred_at desc, l.id desc
limit :limit;
