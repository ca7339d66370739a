"""`release-graph-webserver`: Dagster's webserver, with the identity an authenticating reverse proxy gives on
every run launched through it.

Dagster's open-source webserver has no users: a run launched from the UI carries only the tags the browser sent,
and nothing of the HTTP request reaches the run (its request context is not asked for tags when a single run is
launched). So an approval typed in the launchpad names whoever the person typed. Behind a proxy that
authenticates people (oauth2-proxy, an identity-aware proxy) and passes the identity in a header, this ASGI
middleware rewrites each GraphQL request that launches runs: the tag `release/authenticated_user` is set to the
header's value, and a value the browser sent for that tag is dropped (with or without the header), so nobody
can type it. Requests that could launch runs past that rewriting are refused (403): the tag's name written in
the query, a mutation with inline inputs, a mutation sent other than as POST application/json. The approval
step takes the tag over the typed approver (release_graph/assets/approval.py).

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
from urllib.parse import parse_qs

from graphql import GraphQLError, Visitor, parse, visit
from graphql.language import DocumentNode, NamedTypeNode, OperationDefinitionNode, OperationType

from release_graph.release.tags import AUTHENTICATED_USER_TAG

IDENTITY_HEADER_VARIABLE = "RELEASE_GRAPH_IDENTITY_HEADER"
LOGGER = logging.getLogger("release_graph.webserver")

# The inputs whose tags become a run's tags (dagster_graphql.schema.inputs), and where in them the tags are: a
# run from the launchpad or the Materialize button and several at once (ExecutionParams), a re-execution, whose
# tags upsert over the parent run's (ReexecutionParams), a backfill (LaunchBackfillParams).
TAGS_OF_INPUT = {"ExecutionParams": ("executionMetadata", "tags"), "ReexecutionParams": ("extraTags",),
                 "LaunchBackfillParams": ("tags",)}


class IdentityRefused(Exception):
    """A GraphQL request that could put a run in the UI's hands with an identity the proxy did not give."""


class _Literals(Visitor):
    """What a request writes inline: the identity tag's name as a string, and input objects or lists."""

    def __init__(self):
        super().__init__()
        self.names_identity_tag = self.inline_inputs = False

    def enter_string_value(self, node, *_):
        self.names_identity_tag |= node.value == AUTHENTICATED_USER_TAG

    def enter_object_value(self, *_):
        self.inline_inputs = True

    def enter_list_value(self, *_):
        self.inline_inputs = True


def _checked(query) -> DocumentNode | None:
    """The parsed request if it is a mutation (only mutations launch runs; queries, the Runs page's filter by
    this tag among them, pass as they are), refused when it could smuggle an identity; None otherwise."""
    if not isinstance(query, str):
        return None
    try:
        document = parse(query)
    except GraphQLError:
        return None  # not GraphQL: Dagster refuses it
    if not _mutates(document):
        return None
    literals = _Literals()
    visit(document, literals)
    if literals.names_identity_tag:
        raise IdentityRefused(f"the run tag {AUTHENTICATED_USER_TAG} is set by the authenticating proxy, "
                              "never by a request")
    # Launch inputs written inline would escape the rewriting below (it rewrites variables): behind the proxy a
    # mutation passes its inputs as variables, as the Dagster UI always does.
    if literals.inline_inputs:
        raise IdentityRefused("behind the authenticating proxy a mutation passes its inputs as variables "
                              "(as the Dagster UI does), not inline")
    return document


def _mutates(document: DocumentNode) -> bool:
    return any(isinstance(d, OperationDefinitionNode) and d.operation == OperationType.MUTATION
               for d in document.definitions)


def _input_type(node) -> str:
    while not isinstance(node, NamedTypeNode):
        node = node.type  # NonNull and List wrap the named type
    return node.name.value


def _without_identity(value):
    """`value` (decoded JSON) without any {key: release/authenticated_user, ...} tag, however deep."""
    if isinstance(value, list):
        return [_without_identity(v) for v in value
                if not (isinstance(v, dict) and v.get("key") == AUTHENTICATED_USER_TAG)]
    if isinstance(value, dict):
        return {k: _without_identity(v) for k, v in value.items()}
    return value


def _stamp(value, path: tuple[str, ...], identity: str | None, reexecution: bool) -> None:
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            continue
        holder = item
        for step in path[:-1]:
            if not isinstance(holder.get(step), dict):
                holder[step] = {}
            holder = holder[step]
        tags = list(holder.get(path[-1]) or [])
        if identity:
            tags.append({"key": AUTHENTICATED_USER_TAG, "value": identity})
        elif reexecution:
            # A re-execution keeps its parent run's tags unless they are upserted: a blank identity, which the
            # approval step reads as none, so the parent's approver is not re-used by someone else.
            tags.append({"key": AUTHENTICATED_USER_TAG, "value": ""})
        holder[path[-1]] = tags


def stamp_identity(payload: dict, identity: str | None) -> dict:
    """A GraphQL request (`query`, `variables`, `operationName`, as a JSON POST carries them) with every run it
    launches tagged with `identity`, and with no identity when there is none; a query comes back as it was.
    Raises IdentityRefused."""
    document = _checked(payload.get("query"))
    variables = payload.get("variables")
    if document is None:
        return payload
    if isinstance(variables, str):  # Dagster takes variables as a JSON text too
        try:
            variables = json.loads(variables)
        except ValueError:
            return payload  # Dagster refuses malformed variables
    variables = _without_identity(variables if isinstance(variables, dict) else {})
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        for declared in definition.variable_definitions or ():
            name, kind = declared.variable.name.value, _input_type(declared.type)
            if kind in TAGS_OF_INPUT and variables.get(name) is not None:
                _stamp(variables[name], TAGS_OF_INPUT[kind], identity, reexecution=kind == "ReexecutionParams")
    return {**payload, "variables": variables}


class ProxyIdentityMiddleware:
    """ASGI middleware: GraphQL requests get the proxy's identity (`header`) as the tag of the runs they launch."""

    def __init__(self, app, header: str):
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope, receive: Callable, send: Callable):
        if scope["type"] != "http" or not scope["path"].rstrip("/").endswith("/graphql"):
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
        try:
            body = self._rewritten(scope, body, identity)
        except IdentityRefused as refused:
            await _answer(send, 403, str(refused))
            return
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
    def _rewritten(scope, body: bytes, identity: str | None) -> bytes:
        content_type = next((v.decode("latin-1") for n, v in scope["headers"] if n.lower() == b"content-type"), "")
        if scope["method"] == "POST" and "application/json" in content_type:
            try:
                payload = json.loads(body)
            except ValueError:
                return body  # Dagster refuses it
            return json.dumps(stamp_identity(payload, identity)).encode() if isinstance(payload, dict) else body
        # Dagster also takes a query from the URL (GET, and a POST of another type) or as application/graphql:
        # none of these is rewritten, so none may launch anything.
        query = body.decode("utf-8", "replace") if "application/graphql" in content_type else (
            parse_qs(scope.get("query_string", b"").decode("latin-1")).get("query", [None])[0])
        if _checked(query) is not None:
            raise IdentityRefused("behind the authenticating proxy a mutation is sent as POST application/json "
                                  "(as the Dagster UI does)")
        return body


async def _answer(send: Callable, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})


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
