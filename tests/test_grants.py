"""Every privilege the API roles hold, on every object quotaflow creates, is listed here: a new
object or grant that widens what anon or authenticated may do fails this test until the list
(reviewed) says so. PUBLIC counts for both roles. Supabase's own schemas (auth, extensions)
are not quotaflow's and are left out."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.db import act_as

GRANTS_SQL = """
with roles as (
  select oid, rolname::text as name from pg_roles where rolname in ('anon', 'authenticated')
  union all select 0, 'PUBLIC'
),
schemas as (
  select oid, nspname::text as name from pg_namespace
  where nspname in ('public', 'private', 'supabase_migrations')
)
select r.name, n.name || '.' || c.relname, a.privilege_type
from pg_class c join schemas n on n.oid = c.relnamespace
cross join lateral aclexplode(coalesce(c.relacl, acldefault(
  case when c.relkind = 'S' then 's' else 'r' end::"char", c.relowner))) a
join roles r on r.oid = a.grantee
where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
union all
select r.name, n.name || '.' || c.relname || '.' || att.attname, a.privilege_type
from pg_attribute att join pg_class c on c.oid = att.attrelid
join schemas n on n.oid = c.relnamespace
cross join lateral aclexplode(att.attacl) a join roles r on r.oid = a.grantee
where att.attacl is not null and not att.attisdropped
union all
select r.name, n.name || '.' || p.proname || '/' || p.pronargs, a.privilege_type
from pg_proc p join schemas n on n.oid = p.pronamespace
cross join lateral aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
join roles r on r.oid = a.grantee
union all
select r.name, n.name, a.privilege_type
from pg_namespace ns join schemas n on n.oid = ns.oid
cross join lateral aclexplode(coalesce(ns.nspacl, acldefault('n', ns.nspowner))) a
join roles r on r.oid = a.grantee
union all
select r.name,
       'default for new ' || d.defaclobjtype::text || ' in ' || coalesce(n.name, 'any schema'),
       a.privilege_type
from pg_default_acl d left join schemas n on n.oid = d.defaclnamespace
cross join lateral aclexplode(d.defaclacl) a join roles r on r.oid = a.grantee
where d.defaclnamespace = 0 or n.oid is not null
"""

# "grantee object privilege", one per line; a function is name/number of arguments. Default
# privileges: r tables, S sequences, f functions (Supabase grants new tables and functions in
# public to the API roles; every quotaflow migration revokes what it does not mean to grant,
# which the lines below check).
EXPECTED = """
PUBLIC public USAGE
anon public USAGE
anon default for new f in public EXECUTE
anon default for new r in public DELETE
anon default for new r in public INSERT
anon default for new r in public REFERENCES
anon default for new r in public SELECT
anon default for new r in public TRIGGER
anon default for new r in public TRUNCATE
anon default for new r in public UPDATE
authenticated default for new f in public EXECUTE
authenticated default for new r in public DELETE
authenticated default for new r in public INSERT
authenticated default for new r in public REFERENCES
authenticated default for new r in public SELECT
authenticated default for new r in public TRIGGER
authenticated default for new r in public TRUNCATE
authenticated default for new r in public UPDATE
authenticated private USAGE
authenticated public USAGE
authenticated private.assert_member/1 EXECUTE
authenticated private.assert_model_cap/2 EXECUTE
authenticated private.assert_report_args/3 EXECUTE
authenticated private.assert_text_cap/3 EXECUTE
authenticated private.assert_time_zone/1 EXECUTE
authenticated private.assert_usage_details/5 EXECUTE
authenticated private.assert_tokens/4 EXECUTE
authenticated private.bucket_price/3 EXECUTE
authenticated private.cost_parts/5 EXECUTE
authenticated private.details_cost/3 EXECUTE
authenticated private.display_rate_periods/3 EXECUTE
authenticated private.effective_quotas/1 EXECUTE
authenticated private.has_org_role/2 EXECUTE
authenticated private.member_organization_ids/0 EXECUTE
authenticated private.lookup_price/4 EXECUTE
authenticated private.metric_amount/3 EXECUTE
authenticated private.normalise_model/1 EXECUTE
authenticated private.quota_applies/5 EXECUTE
authenticated private.resolve_price/3 EXECUTE
authenticated private.snapshot_base/1 EXECUTE
authenticated private.tier_name/1 EXECUTE
authenticated private.window_bounds/4 EXECUTE
authenticated public.check_quota/6 EXECUTE
authenticated public.estimate_cost/7 EXECUTE
authenticated public.estimate_cost_breakdown/7 EXECUTE
authenticated public.estimate_usage_cost/9 EXECUTE
authenticated public.get_quota_status/1 EXECUTE
authenticated public.model_performance/4 EXECUTE
authenticated public.top_users/4 EXECUTE
authenticated public.usage_aggregate/12 EXECUTE
authenticated public.usage_by_day/5 EXECUTE
authenticated public.usage_by_dimension/5 EXECUTE
authenticated public.usage_by_organization/2 EXECUTE
authenticated public.usage_summary/4 EXECUTE
authenticated public.usage_trends/2 EXECUTE
authenticated public.api_keys.created_at SELECT
authenticated public.api_keys.expires_at SELECT
authenticated public.api_keys.id SELECT
authenticated public.api_keys.key_prefix SELECT
authenticated public.api_keys.last_used_at SELECT
authenticated public.api_keys.name SELECT
authenticated public.api_keys.organization_id SELECT
authenticated public.api_keys.revoked_at SELECT
authenticated public.api_usage_logs SELECT
authenticated public.cost_estimates SELECT
authenticated public.currency_rates SELECT
authenticated public.dimension_defaults SELECT
authenticated public.model_aliases SELECT
authenticated public.provider_billing_rules SELECT
authenticated public.organization_members DELETE
authenticated public.organization_members INSERT
authenticated public.organization_members SELECT
authenticated public.price_dimensions SELECT
authenticated public.price_rates SELECT
authenticated public.organization_members.role UPDATE
authenticated public.organizations SELECT
authenticated public.organizations.display_currency UPDATE
authenticated public.organizations.name UPDATE
authenticated public.organizations.time_zone UPDATE
authenticated public.quota_alerts SELECT
authenticated public.quota_periods SELECT
authenticated public.quota_reservations SELECT
authenticated public.usage_quotas DELETE
authenticated public.usage_quotas SELECT
authenticated public.usage_quotas.alert_thresholds INSERT
authenticated public.usage_quotas.alert_thresholds UPDATE
authenticated public.usage_quotas.enforcement INSERT
authenticated public.usage_quotas.enforcement UPDATE
authenticated public.usage_quotas.metric INSERT
authenticated public.usage_quotas.model INSERT
authenticated public.usage_quotas.model UPDATE
authenticated public.usage_quotas.name INSERT
authenticated public.usage_quotas.name UPDATE
authenticated public.usage_quotas.organization_id INSERT
authenticated public.usage_quotas.provider INSERT
authenticated public.usage_quotas.provider UPDATE
authenticated public.usage_quotas.quota_limit INSERT
authenticated public.usage_quotas.quota_limit UPDATE
authenticated public.usage_quotas.quota_type INSERT
authenticated public.usage_quotas.quota_type UPDATE
authenticated public.usage_quotas.time_zone INSERT
authenticated public.usage_quotas.time_zone UPDATE
authenticated public.usage_quotas.user_id INSERT
authenticated public.usage_quotas.user_id UPDATE
"""


def grants(conn: psycopg.Connection[Any]) -> set[str]:
    return {" ".join(row) for row in conn.execute(GRANTS_SQL)}


def differences(conn: psycopg.Connection[Any]) -> tuple[set[str], set[str]]:
    """(granted but not listed, listed but not granted)."""
    expected = {line for line in EXPECTED.strip().splitlines()}
    got = grants(conn)
    return got - expected, expected - got


def test_the_api_roles_hold_exactly_the_listed_grants(conn: psycopg.Connection[Any]) -> None:
    extra, missing = differences(conn)
    assert extra == set(), "granted to anon/authenticated/PUBLIC but not listed"
    assert missing == set(), "listed but no longer granted: update EXPECTED"


def test_no_api_role_holds_anything_on_a_sequence(conn: psycopg.Connection[Any]) -> None:
    """Not even through the defaults for sequences created later."""
    assert [g for g in grants(conn) if "_seq " in g or "for new S" in g] == []


def test_a_new_grant_to_anon_fails_the_comparison(conn: psycopg.Connection[Any]) -> None:
    conn.execute("grant select on public.api_keys to anon")
    conn.execute("create table public.widened (id int)")  # Supabase's defaults grant it all
    extra, _ = differences(conn)
    assert "anon public.api_keys SELECT" in extra
    assert "anon public.widened SELECT" in extra and "authenticated public.widened DELETE" in extra


def test_the_setval_attack_is_refused(conn: psycopg.Connection[Any]) -> None:
    """Issue 13's attack: setval to the maximum in a rolled-back transaction (setval is never
    undone) would make every tenant's next alert fail; reading last_value counts them."""
    for role in ("anon", "authenticated"):
        for attack in (
            "select setval('public.quota_alerts_id_seq', 9223372036854775807)",
            "select last_value from public.quota_alerts_id_seq",
            "select nextval('public.quota_periods_id_seq')",
        ):
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege),
                act_as(conn, role, rollback=True) as c,
            ):
                c.execute(attack)
    last = conn.execute("select last_value, is_called from public.quota_alerts_id_seq").fetchone()
    assert last == (1, False)
