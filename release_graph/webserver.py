"""`release-graph-webserver`: Dagster's webserver, with the identity an authenticating reverse proxy gives on
every run launched through it.

Dagster's open-source webserver has no users: a run launched from the UI carries only the tags the browser sent,
and nothing of the HTTP request reaches the run (its request context is not asked for tags when a single run is
launched). So an approval typed in the launchpad names whoever the person typed. Behind a proxy that
authenticates people (oauth2-proxy, an identity-aware proxy) and passes the identity in a header, this ASGI
middleware rewrites each GraphQL request that launches runs: the tag `release/authenticated_user` is set to the
header's value, and a value the browser sent for that tag is dropped (with or without the header), so nobody
can type it. The approval step takes that tag over the typed approver (release_graph/assets/approval.py).

It is only as good as the network around it: the webserver must be reachable through the proxy alone (listen on
127.0.0.1 or a private network), and the proxy must drop the header from what the browser sends. The command
line is dagster-webserver's own (every option, same defaults); the header is named by
$RELEASE_GRAPH_IDENTITY_HEADER. docs/operations.md, "Approvals and identities", says what this does not cover.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable

from release_graph.release.tags import AUTHENTICATED_USER_TAG

IDENTITY_HEADER_VARIABLE = "RELEASE_GRAPH_IDENTITY_HEADER"
LOGGER = logging.getLogger("release_graph.webserver")
MAX_BODY_BYTES = 10 * 1024 * 1024  # a launch request is a few KB; anything larger is passed on untouched

# Where a GraphQL request that launches runs carries their tags (dagster_graphql.schema.inputs): a run from the
# launchpad or the Materialize button (executionParams), several runs at once (executionParamsList), a
# re-execution, whose tags upsert over the parent run's (reexecutionParams.extraTags), and a backfill.
def _tag_lists(variables: dict) -> list[tuple[dict, str]]:
    """(object, key) of every list of {key, value} tags a launch request carries, created where it may be."""
    found = []
    params = [variables.get("executionParams")] + list(variables.get("executionParamsList") or [])
    for execution in params:
        if isinstance(execution, dict):
            metadata = execution.get("executionMetadata")
            if not isinstance(metadata, dict):
                metadata = execution["executionMetadata"] = {}
            found.append((metadata, "tags"))
    reexecution = variables.get("reexecutionParams")
    if isinstance(reexecution, dict):
        found.append((reexecution, "extraTags"))
    backfill = variables.get("backfillParams")
    if isinstance(backfill, dict):
        found.append((backfill, "tags"))
    return found


def stamp_identity(document, identity: str | None):
    """The GraphQL request `document` (one operation or a batch) with every launch's identity tag set to
    `identity`, or removed (blank for a re-execution) when there is none. Other requests come back unchanged."""
    operations = document if isinstance(document, list) else [document]
    for operation in operations:
        variables = operation.get("variables") if isinstance(operation, dict) else None
        if not isinstance(variables, dict):
            continue
        for holder, key in _tag_lists(variables):
            tags = [t for t in (holder.get(key) or [])
                    if not (isinstance(t, dict) and t.get("key") == AUTHENTICATED_USER_TAG)]
            if identity:
                tags.append({"key": AUTHENTICATED_USER_TAG, "value": identity})
            elif key == "extraTags":
                # A re-execution keeps its parent run's tags unless they are upserted: a blank identity, which
                # the approval step reads as none, so the parent's approver is not re-used by someone else.
                tags.append({"key": AUTHENTICATED_USER_TAG, "value": ""})
            holder[key] = tags
    return document


class ProxyIdentityMiddleware:
    """ASGI middleware: POST .../graphql bodies get the proxy's identity (`header`) as a run tag."""

    def __init__(self, app, header: str):
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope, receive: Callable, send: Callable):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/graphql"):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        identity = next((value.decode("latin-1").strip() for name, value in scope["headers"]
                         if name.lower() == self.header), "") or None
        body = self._rewritten(body, identity)
        headers = [(n, v) for n, v in scope["headers"] if n.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: the disconnect, when the client goes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    @staticmethod
    def _rewritten(body: bytes, identity: str | None) -> bytes:
        if len(body) > MAX_BODY_BYTES:
            return body
        try:
            document = json.loads(body)
        except ValueError:
            return body  # not JSON (application/graphql has no variables, so no tags): Dagster answers it
        return json.dumps(stamp_identity(document, identity)).encode()


def main(argv: list[str] | None = None) -> None:
    """dagster-webserver with ProxyIdentityMiddleware around its app; the header is $RELEASE_GRAPH_IDENTITY_HEADER."""
    header = os.environ.get(IDENTITY_HEADER_VARIABLE, "").strip()
    if not header:
        sys.exit(f"release-graph-webserver: set ${IDENTITY_HEADER_VARIABLE} to the header your authenticating proxy "
                 "sets (e.g. X-Forwarded-Email); without a proxy, run dagster-webserver itself")
    # dagster-webserver builds its app in one function and offers no hook for middleware: wrapping that function
    # keeps every option of its command line (and its defaults) as they are.
    from dagster_webserver import cli as webserver_cli

    build_app = webserver_cli.create_app_from_workspace_process_context

    def app_with_identity(*args, **kwargs):
        return ProxyIdentityMiddleware(build_app(*args, **kwargs), header)

    webserver_cli.create_app_from_workspace_process_context = app_with_identity
    LOGGER.warning(f"runs launched from the UI carry {AUTHENTICATED_USER_TAG} from the header {header}: serve this "
                   "webserver through the authenticating proxy only")
    webserver_cli.cli.main(args=argv, prog_name="release-graph-webserver")


if __name__ == "__main__":
    main()
