"""Reading usage back: reports over the SQL report functions, records, aggregates, export
and quota alerts.

    from quotaflow import reports
    reports.overview(db, org, start, end)            # totals, per provider/model/day
    reports.get_aggregated(backend, filters, group_by="model")
    reports.export(backend, filters, "csv", out)

:mod:`.summaries` holds the report models and functions (``overview``, ``user_report``,
``organization_report``, ``trends``, ``model_performance``, ``dashboard``); :mod:`.analytics`
the record queries, aggregates, export, alerts and the Tracker's analytics methods.
"""

from __future__ import annotations

from .analytics import (
    ALERT_CHANNEL,
    EXPORT_COLUMNS,
    AggregatedUsage,
    AlertListener,
    AlertsMixin,
    ExportFormat,
    GroupBy,
    QuotaAlert,
    UsageFilters,
    UsageGroup,
    UsageTotals,
    count_records,
    export,
    get_aggregated,
    get_alerts,
    get_records,
)
from .summaries import (
    DailyPoint,
    DashboardReport,
    Group,
    ModelPerformance,
    ModelPerformanceReport,
    OrganizationReport,
    OverviewReport,
    Period,
    RecentCall,
    Totals,
    TrendsReport,
    UserReport,
    dashboard,
    model_performance,
    organization_report,
    overview,
    trends,
    user_report,
)

__all__ = [
    "ALERT_CHANNEL",
    "EXPORT_COLUMNS",
    "AggregatedUsage",
    "AlertListener",
    "AlertsMixin",
    "DailyPoint",
    "DashboardReport",
    "ExportFormat",
    "Group",
    "GroupBy",
    "ModelPerformance",
    "ModelPerformanceReport",
    "OrganizationReport",
    "OverviewReport",
    "Period",
    "QuotaAlert",
    "RecentCall",
    "Totals",
    "TrendsReport",
    "UsageFilters",
    "UsageGroup",
    "UsageTotals",
    "UserReport",
    "count_records",
    "dashboard",
    "export",
    "get_aggregated",
    "get_alerts",
    "get_records",
    "model_performance",
    "organization_report",
    "overview",
    "trends",
    "user_report",
]
