-- Prices quotaflow keeps up to date versus prices an operator set. `quotaflow pricing sync`
-- (and `quotaflow migrate`, which syncs after the migrations) only ever changes managed rows:
-- the catalogue the migrations seeded and what earlier syncs wrote. A row inserted by hand or
-- by `quotaflow pricing import` is the operator's (a negotiated price, a private model) and is
-- left as it is, whatever the snapshot says.

alter table public.cost_estimates add column managed boolean not null default false;
comment on column public.cost_estimates.managed is
  'True: kept up to date by quotaflow pricing sync (seeded or synced); false: set by an operator, never changed by a sync.';
-- Every row so far came from the catalogue migrations or an import of LiteLLM's map.
update public.cost_estimates set managed = true;
