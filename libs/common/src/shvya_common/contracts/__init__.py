"""Message contracts: one pydantic model per subject, with subjects and streams named once here.

Services import these models and never each other; a change to a shape is a change here.
"""

from shvya_common.contracts.jobs import (
    TASKS,
    BumpupParams,
    CampaignParams,
    EngageParams,
    JobEnvelope,
    MediaFetchParams,
    ReportParams,
    SendParams,
    SequenceStepParams,
    SummaryParams,
    TaskSpec,
    WebhookParams,
    WhatsAppWebInboundParams,
    task_spec,
)
from shvya_common.contracts.subjects import PRIORITY_LEVELS, Topology, priority_level

__all__ = [
    "PRIORITY_LEVELS",
    "TASKS",
    "BumpupParams",
    "CampaignParams",
    "EngageParams",
    "JobEnvelope",
    "MediaFetchParams",
    "ReportParams",
    "SendParams",
    "SequenceStepParams",
    "SummaryParams",
    "TaskSpec",
    "Topology",
    "WebhookParams",
    "WhatsAppWebInboundParams",
    "priority_level",
    "task_spec",
]
