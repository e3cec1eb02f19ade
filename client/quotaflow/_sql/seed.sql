-- quotaflow demo data: one organization with three members and a set of quotas.
-- Applied by `supabase db reset` locally, by the demo, and by tests that need seeded data.
-- Ids are fixed so the README's queries work as written:
--   select * from check_quota('00000000-0000-4000-8000-00000000a11c', 'openai', 'gpt-4', 0.01);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000a11ce', 'alice@acme.test'),
  ('00000000-0000-4000-8000-0000000000b0', 'bob@acme.test'),
  ('00000000-0000-4000-8000-00000000ca01', 'carol@acme.test')
on conflict (id) do nothing;

insert into public.organizations (id, name, time_zone, credits_per_usd, display_currency) values
  ('00000000-0000-4000-8000-00000000a11c', 'Acme Learning', 'America/Sao_Paulo', 1000, 'BRL')
on conflict (id) do nothing;

insert into public.organization_members (organization_id, user_id, role) values
  ('00000000-0000-4000-8000-00000000a11c', '00000000-0000-4000-8000-0000000a11ce', 'owner'),
  ('00000000-0000-4000-8000-00000000a11c', '00000000-0000-4000-8000-0000000000b0', 'admin'),
  ('00000000-0000-4000-8000-00000000a11c', '00000000-0000-4000-8000-00000000ca01', 'member')
on conflict do nothing;

-- Windows are computed by the database in the organization's time zone; reset_at given here is
-- replaced by the next calendar boundary.
insert into public.usage_quotas (organization_id, name, quota_type, metric, enforcement, quota_limit, user_id, provider, model) values
  ('00000000-0000-4000-8000-00000000a11c', 'Organization daily spend', 'daily', 'usd', 'hard', 10.00, null, null, null),
  ('00000000-0000-4000-8000-00000000a11c', 'Organization monthly spend', 'monthly', 'usd', 'hard', 200.00, null, null, null),
  ('00000000-0000-4000-8000-00000000a11c', 'Per-user daily spend (demo-user)', 'daily', 'usd', 'hard', 1.00, 'demo-user', null, null),
  ('00000000-0000-4000-8000-00000000a11c', 'GPT-4o hourly tokens', 'hourly', 'tokens', 'soft', 200000, null, 'openai', 'gpt-4o'),
  ('00000000-0000-4000-8000-00000000a11c', 'Requests per minute', 'minute', 'requests', 'hard', 120, null, null, null);

-- A demo exchange rate so reports show the organization's BRL figures next to USD
-- (illustrative, not a live rate: keep currency_rates current yourself).
insert into public.currency_rates (currency, usd_rate, effective_from, source) values
  ('BRL', 5.40, '2026-01-01T00:00:00Z', 'demo rate')
on conflict do nothing;
