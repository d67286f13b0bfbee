"""The audit trail of the API's changes: every change an admin (or the operator) makes through
`/v1/*` or `/admin/*` writes one `audit.action` event, who, what, when.

Most routes say precisely what they did (`record_audit`, in the transaction of the change:
`api_key.revoked`, `company.updated`, ...). This pure ASGI middleware covers the others without a
copy of the same call in each of ~90 handlers: after a 2xx answer to a POST, PUT, PATCH or
DELETE by an admin key, an admin console user or the operator, when the handler wrote no audit
event of its own, it records `<METHOD> <route>` with the route's path parameters (ids, never a
body, which may hold secrets). It is written after the change committed, so a crash in between
can lose the event, never the change.
"""

from __future__ import annotations

from typing import Any

import structlog

from shvya_common.apikeys import AUDIT_WRITTEN, record_audit
from shvya_ingest.middleware import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PREFIXES = ("/v1/", "/admin/")
# Not changes of the company's data: signing in and out, and what a console keeps up to date.
EXEMPT = frozenset({"/v1/session", "/v1/leads/{lead_id}/seen"})


class AuditTrail:
    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in CHANGES
            or not scope["path"].startswith(PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        status = [0]
        flag = [False]
        token = AUDIT_WRITTEN.set(flag)

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            AUDIT_WRITTEN.reset(token)
        if 200 <= status[0] < 300 and not flag[0]:
            await self._record(scope)

    async def _record(self, scope: Scope) -> None:
        caller = (scope.get("state") or {}).get("principal")
        route = getattr(scope.get("route"), "path", None)
        if caller is None or route is None or route in EXEMPT:
            return
        if caller.kind != "operator" and caller.role != "admin":
            return
        params = {k: str(v) for k, v in (scope.get("path_params") or {}).items()}
        company = caller.company_id
        if company is None and "company_id" in params:
            company = params["company_id"]
        try:
            pool = self.fastapi_app.state.ingest.plat.pool
            await record_audit(
                pool, company, caller.actor, f"{scope['method']} {route}", {"params": params}
            )
        except Exception as err:  # the change is made and answered; say the event is missing
            log.warning("audit_event_not_written", route=route, error=type(err).__name__)
