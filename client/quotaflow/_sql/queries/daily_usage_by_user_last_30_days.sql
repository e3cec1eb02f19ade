-- Daily usage by user, last 30 days (seed 000's query).
-- One row per app user and day (the organization's local day) with calls in the last 30 days,
-- newest day first, then most expensive user. total_cost is USD.
--
-- Run:     psql "$DATABASE_URL" -v org_id=<uuid> -f sql/queries/daily_usage_by_user_last_30_days.sql
-- Columns: user_id, date, total_tokens, total_cost, request_count, credits

\if :{?org_id}
\else
  \warn 'usage: psql "$DATABASE_URL" -v org_id=<organization uuid> -f <this file>'
  \quit
\endif

select l.user_id,
       (l.occurred_at at time zone o.time_zone)::date as date,
       sum(l.total_tokens)::bigint as total_tokens,
       sum(l.cost_usd) as total_cost,
       count(*) as request_count,
       sum(l.credits) as credits
from public.api_usage_logs l
join public.organizations o on o.id = l.organization_id
where l.organization_id = :'org_id'
  and l.occurred_at >= now() - interval '30 days'
group by l.user_id, 2
order by 2 desc, 4 desc, 1 nulls last;
