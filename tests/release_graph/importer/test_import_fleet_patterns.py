"""Patterns that real fleets use and the importer once missed (issue 15), one small fixture each.

Every fixture is written here for the test (no third-party file), imported through the command line, and
the written fleet.yaml is read back with the real manifest loader. Each test asserts what a user relies on:
the edge with its evidence, the secret reference, the REVIEW note or the error.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from release_graph.fleet import load_fleet
from release_graph.importer.cli import run


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def imported(capsys, tmp_path: Path, *inputs: object, options: tuple[str, ...] = ()) -> tuple[object, str, str]:
    """(fleet as the loader reads it, comments of the file as one line, printed summary)."""
    out = tmp_path / "out" / "fleet.yaml"
    code = run([*(str(i) for i in inputs), "-o", str(out), "--force", *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = out.read_text()
    notes = " ".join(line.split("#", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("#"))
    return load_fleet(out, check_files=False), notes, captured.out


def failed(capsys, tmp_path: Path, *inputs: object) -> str:
    """stderr of an import that must fail and write nothing."""
    out = tmp_path / "not-written" / "fleet.yaml"
    code = run([*(str(i) for i in inputs), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert not out.exists()
    return captured.err


def edges(fleet) -> dict[tuple[str, str], object]:
    return {(name, edge.name): edge for name, service in fleet.services.items() for edge in service.depends_on}


# --- 1. bare `environment` names take their value from .env, --env-file and --env ----------------------------


def test_bare_environment_names_take_their_values_from_env_files_and_name_services(tmp_path, capsys):
    app = write(tmp_path / "app", {
        ".env": "ORDERS_ADDR=orders:7000\nLOG_LEVEL=debug\n",
        "extra.env": "ORDERS_ADDR=orders:7001\n",
        "compose.yaml": """\
            services:
              shop:
                image: example/shop:1.0
                environment:
                  - ORDERS_ADDR
                  - LOG_LEVEL
                  - FROM_THE_SHELL
              orders:
                image: example/orders:1.0
        """,
    })
    fleet, notes, _ = imported(capsys, tmp_path, app)
    shop = fleet.services["shop"]
    assert dict(shop.env) == {"ORDERS_ADDR": "orders:7000", "LOG_LEVEL": "debug"}
    assert edges(fleet)[("shop", "orders")].evidence == ("compose.yaml: shop: environment.ORDERS_ADDR",)
    assert "ORDERS_ADDR=orders:7000; value from .env:1" in notes
    assert "values of bare `environment` names, from the project's variables: LOG_LEVEL (.env:2), " \
           "ORDERS_ADDR (.env:1)" in notes
    assert "taken from the shell at run time, so not written: FROM_THE_SHELL" in notes

    fleet, notes, _ = imported(capsys, tmp_path, app / "compose.yaml", options=(
        "--env-file", str(app / "extra.env"), "--env", "LOG_LEVEL=warn"))
    assert dict(fleet.services["shop"].env) == {"ORDERS_ADDR": "orders:7001", "LOG_LEVEL": "warn"}
    assert "LOG_LEVEL (--env), ORDERS_ADDR (extra.env:1)" in notes


# --- 2. an override file that holds only comments ----------------------------------------------------------------


def test_an_override_file_of_only_comments_is_empty_as_in_compose(tmp_path, capsys):
    app = write(tmp_path / "app", {
        "docker-compose.yml": "services:\n  web:\n    image: example/web:1.0\n",
        "docker-compose.override.yml": "# services:\n#   web:\n#     ports: ['8080:80']\n",
    })
    fleet, notes, _ = imported(capsys, tmp_path, app)
    assert set(fleet.services) == {"web"}
    assert "docker-compose.override.yml holds no settings (only comments or nothing): nothing merged from it" in notes
    # only empty files: still an error that names them
    write(app, {"docker-compose.yml": "# nothing yet\n"})
    assert "docker-compose.yml, docker-compose.override.yml: no services defined" in failed(capsys, tmp_path, app)


def workload(name: str, namespace: str = "shop", *, env: str = "", port: int = 8080, extra: str = "") -> str:
    """A Deployment and its Service, as small as Kubernetes allows."""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: {name}
          image: example/{name}:1.0
          ports: [{{containerPort: {port}}}]
          env: [{env}]
{extra}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}}}]
"""


# --- 4. camelCase keys and keys ending in Connection / ConnectionString ------------------------------------------


def test_camel_case_and_connection_keys_name_the_service_in_a_bare_value(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          basket:
            image: example/basket:1.0
            environment:
              - EventBusConnection=${EVENT_BUS:-bus}
              - ConnectionString=basketdata
              - identityUrl=http://identity
              - FeatureMode=identity
          catalog:
            image: example/catalog:1.0
            environment:
              ConnectionString: Server=tcp:sqldata,1433;Database=catalog;User Id=sa;Encrypt=False
          bus: {image: "rabbitmq:3.13"}
          basketdata: {image: "redis:7.2"}
          identity: {image: "example/identity:1.0"}
          sqldata: {image: "example/sql:1.0"}
    """})
    fleet, notes, printed = imported(capsys, tmp_path, app)
    assert {pair: edge.evidence for pair, edge in edges(fleet).items()} == {
        ("basket", "bus"): ("compose.yaml: basket: environment.EventBusConnection",),
        ("basket", "basketdata"): ("compose.yaml: basket: environment.ConnectionString",),
        ("basket", "identity"): ("compose.yaml: basket: environment.identityUrl",),  # FeatureMode: no address
        ("catalog", "sqldata"): ("compose.yaml: catalog: environment.ConnectionString",),
    }
    # in a `name=value;...` connection string only the server option names a host (`User Id=sa` does not)
    assert "unresolved" not in printed and "0 unresolved references" in notes


# --- 10. booleans and quantities under address-like keys are settings, not hosts ---------------------------------


def test_a_boolean_or_a_quantity_under_an_address_key_is_no_reference(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          api:
            image: example/api:1.0
            environment:
              OTEL_EXPORTER_OTLP_TRACES_SERVER_TLS_INSECURE: "true"
              DB_HOST_VERIFY: off
              BROKER_TIMEOUT: 30s
              CACHE_SERVER: cache
    """})
    fleet, notes, printed = imported(capsys, tmp_path, app)
    assert "unresolved: api -> cache (compose.yaml: api: environment.CACHE_SERVER)" in printed
    assert printed.count("unresolved:") == 1  # not `true`, `off` or `30s`
    assert "1 unresolved reference" in notes


# --- 11. a cluster DNS name without a port, under a plain key ----------------------------------------------------


def test_a_cluster_dns_name_under_a_plain_key_is_resolved_or_listed(tmp_path, capsys):
    k8s = write(tmp_path / "k8s", {
        "orders.yaml": workload("orders", env="{name: ZIPKIN, value: zipkin.tracing.svc.cluster.local}, "
                                          "{name: AUDIT, value: audit.shop.svc}, {name: MODE, value: audit}"),
        "zipkin.yaml": workload("zipkin", "tracing", port=9411),
    })
    fleet, notes, printed = imported(capsys, tmp_path, k8s)
    edge = edges(fleet)[("orders", "zipkin")]
    assert edge.evidence == ("orders.yaml: orders: env.ZIPKIN",) and edge.soft  # zipkin receives telemetry
    assert "unresolved: orders -> audit.shop.svc (orders.yaml: orders: env.AUDIT)" in printed
    assert "no Service audit in namespace shop in the input" in notes
    assert printed.count("unresolved:") == 1  # MODE=audit is a word, not an address


# --- 3. URLs to the host gateway name the service that publishes the host port ------------------------------


def test_host_gateway_urls_lead_to_the_service_publishing_that_port_and_client_urls_are_soft(tmp_path, capsys):
    app = write(tmp_path / "app", {
        ".env": "EXTERNAL_HOST=host.docker.internal\n",
        "compose.yaml": """\
            services:
              web:
                image: example/web:1.0
                ports: ["5100:80"]
                environment:
                  IdentityUrl: http://${EXTERNAL_HOST}:5105
              identity:
                image: example/identity:1.0
                ports: ["127.0.0.1:5105:80/tcp"]
                environment:
                  MvcClient: http://${EXTERNAL_HOST}:5100
                  AdminClient: http://host.docker.internal:5999
        """,
    })
    fleet, notes, printed = imported(capsys, tmp_path, app)
    found = edges(fleet)
    assert found[("web", "identity")].evidence == ("compose.yaml: web: environment.IdentityUrl",)
    assert not found[("web", "identity")].soft
    assert "IdentityUrl=http://host.docker.internal:5105; the host gateway: host port 5105 is published by " \
           "identity (compose.yaml:9)" in notes
    assert "REVIEW: through the host gateway: IdentityUrl (host.docker.internal:5105): in a release-graph " \
           "environment that reaches only a port the environment publishes" in notes
    # the OIDC client URL is handed to browsers, not called: soft, so the two do not form a hard cycle
    assert found[("identity", "web")].soft
    assert "only client-facing URLs name it (MvcClient)" in notes
    assert "unresolved: identity -> host.docker.internal:5999 (compose.yaml: identity: environment.AdminClient)" \
        in printed
    assert "the host gateway, and no service publishes host port 5999" in notes


# --- 5. credentials anywhere become secret references with a REVIEW note -----------------------------------


def test_credentials_in_connection_strings_urls_and_names_become_secret_references(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          catalog:
            image: example/catalog:1.0
            environment:
              - ConnectionString=Server=sqldata;Database=catalog;User Id=sa;Password=Pass@word;Encrypt=False
              - Cache=cache:6379,password=r3d1s,ssl=False
              - BROKER_URL=amqp://app:hunter2@bus:5672
              - EventBusPassword=
              - MYSQL_ALLOW_EMPTY_PASSWORD=true
          sqldata:
            image: example/sql:1.0
            environment: {SA_PASSWORD: Pass@word}
          cache: {image: "redis:7.2"}
          bus: {image: "rabbitmq:3.13"}
    """})
    fleet, notes, _ = imported(capsys, tmp_path, app)
    text = (tmp_path / "out" / "fleet.yaml").read_text()
    assert "Pass@word" not in text and "r3d1s" not in text and "hunter2" not in text
    secrets = {service: {name: ref.describe() for name, ref in refs.items()}
               for service, refs in fleet.environments["dev"].secrets.items()}
    assert secrets == {
        "catalog": {"BROKER_URL": "env:CATALOG_BROKER_URL", "Cache": "env:CATALOG_CACHE",
                    "ConnectionString": "env:CATALOG_CONNECTIONSTRING",
                    "EventBusPassword": "env:CATALOG_EVENTBUSPASSWORD"},
        "sqldata": {"SA_PASSWORD": "env:SQLDATA_SA_PASSWORD"},
    }
    assert dict(fleet.services["catalog"].env) == {"MYSQL_ALLOW_EMPTY_PASSWORD": "true"}  # a switch, not a secret
    # the edges the secret values show are still found, with the password masked in the comment
    assert {provider for (consumer, provider) in edges(fleet) if consumer == "catalog"} == {"sqldata", "cache", "bus"}
    assert "ConnectionString=Server=sqldata;Database=catalog;User Id=sa;Password=***;Encrypt=False" in notes
    assert "REVIEW: secrets, written as references in environments.dev.secrets, never as values: BROKER_URL " \
           "(credentials in its value) from $CATALOG_BROKER_URL; Cache (credentials in its value) from " \
           "$CATALOG_CACHE; ConnectionString (credentials in its value)" in notes


def test_variables_a_target_cannot_pass_are_left_out_with_a_review_note(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          ordering:
            image: example/ordering:1.0
            environment:
              - Serilog__MinimumLevel__Override__Microsoft.AspNetCore=Warning
              - Serilog__MinimumLevel__Default=Information
    """})
    fleet, notes, _ = imported(capsys, tmp_path, app)
    assert dict(fleet.services["ordering"].env) == {"Serilog__MinimumLevel__Default": "Information"}
    assert "REVIEW: variables whose names are no environment variable name a target accepts, so not written: " \
           "Serilog__MinimumLevel__Override__Microsoft.AspNetCore" in notes


# --- 6. infrastructure is recognised on the full repository path ----------------------------------------------


def test_infrastructure_is_recognised_on_the_full_repository_path(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          sqldata: {image: "mcr.microsoft.com/mssql/server:2022-CU12-ubuntu-22.04"}
          mirror: {image: "registry.example.com/vendor/mssql/server:2019-latest"}
          api: {image: "example/server:1.0"}
    """})
    fleet, notes, _ = imported(capsys, tmp_path, app)
    assert {name: (s.infrastructure, s.port) for name, s in fleet.services.items()} == {
        "sqldata": (True, 1433), "mirror": (True, 1433), "api": (False, None)}
    assert "infrastructure (database): image mcr.microsoft.com/mssql/server:2022-CU12-ubuntu-22.04 is well-known " \
           "mssql" in notes


# --- 13. stand-ins are official images by their full names; unpinned prebuilt images are REVIEW notes -------


def test_stand_ins_use_full_official_names_and_unpinned_images_get_a_review_note(tmp_path, capsys):
    app = write(tmp_path / "app", {
        "grafana/Dockerfile": "FROM grafana/grafana:11.0.0\nCOPY dashboards /etc/dashboards\n",
        "compose.yaml": """\
            services:
              grafana: {build: ./grafana}
              prometheus: {build: ./prometheus, image: "${UNSET_REGISTRY}/prometheus:"}
              web: {image: example/web}
              api: {image: "example/api:latest"}
              worker: {image: "example/worker:2.1"}
        """,
    })
    fleet, notes, _ = imported(capsys, tmp_path, app)
    assert (fleet.services["grafana"].image, fleet.services["prometheus"].image) == (
        "docker.io/grafana/grafana", "docker.io/prom/prometheus")
    assert "REVIEW: compose builds this from grafana/ (a custom grafana image) and gives no image name, which is " \
           "not a usable reference; the official image `docker.io/grafana/grafana` stands in (untagged)" in notes
    assert "REVIEW: image 'example/web' names no version (no tag): it resolves to whatever was pushed last" in notes
    assert "REVIEW: image 'example/api:latest' names no version (`latest`)" in notes
    assert "example/worker:2.1' names no version" not in notes


# --- 7. a healthcheck that calls the service's own address ---------------------------------------------------


def test_a_healthcheck_calling_the_services_own_name_gives_health_path_and_port(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          orders:
            image: example/orders:1.0
            container_name: orders-svc
            healthcheck:
              test: ["CMD", "curl", "-f", "http://orders-svc:8080/ready"]
          billing:
            image: example/billing:1.0
            healthcheck:
              test: curl -f https://billing/status || exit 1
          audit:
            image: example/audit:1.0
            healthcheck:
              test: curl -f http://orders:8080/ready
    """})
    fleet, notes, _ = imported(capsys, tmp_path, app)
    assert {name: (s.port, s.health) for name, s in fleet.services.items()} == {
        "orders": (8080, "/ready"), "billing": (443, "/status"),
        "audit": (None, None)}  # calling another service is no health check of its own
    assert "health /ready: from the compose healthcheck (compose.yaml:6): curl -f http://orders-svc:8080/ready" in notes


# --- 8. the service port agrees with the health check, and is never a management port ------------------------


def test_the_service_port_is_the_health_checks_port_and_not_a_management_port(tmp_path, capsys):
    compose = write(tmp_path / "app", {"compose.yaml": """\
        services:
          api:
            image: example/api:1.0
            ports: ["9090:9090", "8080:8080"]
            healthcheck: {test: "wget -qO- http://localhost:8080/health"}
          bus:
            image: rabbitmq:3.13-management
            ports: ["15672:15672", "5672:5672"]
    """})
    fleet, notes, _ = imported(capsys, tmp_path, compose)
    assert {name: (s.port, s.health) for name, s in fleet.services.items()} == {
        "api": (8080, "/health"), "bus": (5672, None)}
    assert "port 8080: the port the compose healthcheck calls, one of the declared ports [9090, 8080]" in notes
    assert "port 5672: the port clients of rabbitmq use, one of the declared ports [15672, 5672]" in notes
    assert "REVIEW: the compose healthcheck calls port" not in notes

    k8s = write(tmp_path / "k8s", {
        "admin-first.yaml": workload("ledger", extra="").replace(
            "ports: [{containerPort: 8080}]", "ports: [{name: management, containerPort: 8081}, {name: http, "
                                              "containerPort: 8080}]").replace("ports: [{port: 8080}]",
                                                                               "ports: [{port: 80, targetPort: http}]"),
        "probe.yaml": workload("search", port=8080, extra="""\
          readinessProbe: {httpGet: {path: /ready, port: 9000}}
""").replace("ports: [{containerPort: 8080}]", "ports: [{containerPort: 8080}, {containerPort: 9000}]"),
    })
    fleet, notes, _ = imported(capsys, tmp_path, k8s)
    assert {name: (s.port, s.health) for name, s in fleet.services.items()} == {
        "ledger": (8080, None), "search": (9000, "/ready")}
    assert "port 8080: a containerPort of container ledger, the port its Service sends traffic to" in notes
    assert "port 9000: a containerPort of container search, the port its HTTP probe calls" in notes


# --- 9. a Service's named targetPort defined on a sidecar --------------------------------------------------------


def test_a_named_target_port_on_a_sidecar_is_resolved_not_reported_as_a_wrong_mapping(tmp_path, capsys):
    k8s = write(tmp_path / "k8s", {"queue.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: queue}
        spec:
          template:
            metadata: {labels: {app: queue}}
            spec:
              containers:
                - name: queue
                  image: example/queue:1.0
                  ports: [{name: amqp, containerPort: 5672}]
                - name: exporter
                  image: example/queue-exporter:1.0
                  ports: [{name: metrics, containerPort: 9419}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: queue}
        spec:
          selector: {app: queue}
          ports: [{name: amqp, port: 5672, targetPort: amqp}, {name: metrics, port: 9419, targetPort: metrics}]
    """})
    fleet, notes, _ = imported(capsys, tmp_path, k8s)
    assert fleet.services["queue"].port == 5672
    assert "Service queue: port 9419 -> targetPort metrics (9419) on sidecar container exporter" in notes
    assert "maps port 9419 to metrics" not in notes  # the false note of old
    assert "REVIEW: Service queue port 9419 goes to sidecar container exporter, which the manifest does not run" \
        in notes


# --- 12. entrypoint and command reach the manifest; volumes and configs are REVIEW notes ----------------------


def test_one_image_run_as_several_services_keeps_each_command_and_says_what_is_not_carried(tmp_path, capsys):
    app = write(tmp_path / "app", {"compose.yaml": """\
        services:
          api:
            image: example/shop:1.0
            command: ["serve", "--port", "8080"]
            volumes: ["./config/api.yaml:/etc/shop/api.yaml:ro", "uploads:/var/uploads"]
            configs: [{source: shop_config, target: /etc/shop/shop.yaml}]
            restart: always
          worker:
            image: example/shop:1.0
            entrypoint: /usr/bin/shop
            command: worker --queue "new orders" --broker bus:5672
          cache:
            image: redis:7.2
            command: redis-server --requirepass s3cret
          bus: {image: "rabbitmq:3.13"}
        volumes: {uploads: {}}
        configs: {shop_config: {file: ./shop.yaml}}
    """})
    fleet, notes, _ = imported(capsys, tmp_path, app)
    api, worker, cache = (fleet.services[n] for n in ("api", "worker", "cache"))
    assert (api.entrypoint, api.command) == (None, ("serve", "--port", "8080"))
    assert (worker.entrypoint, worker.command) == (("/usr/bin/shop",), ("worker", "--queue", "new orders",
                                                                        "--broker", "bus:5672"))
    assert edges(fleet)[("worker", "bus")].evidence == ("compose.yaml: worker: command",)
    assert not edges(fleet)[("worker", "bus")].startup_only  # the command calls it while it runs
    # a command holding a credential is never written
    assert cache.command is None and "s3cret" not in (tmp_path / "out" / "fleet.yaml").read_text()
    assert "REVIEW: `command` (compose.yaml:14) holds a credential, so it is not written" in notes
    assert "REVIEW: not carried by the manifest, so the service may run differently: configs " \
           "(shop_config:/etc/shop/shop.yaml); volumes (./config/api.yaml:/etc/shop/api.yaml:ro, " \
           "uploads:/var/uploads)" in notes
    assert "left to the deploy target, not carried: restart" in notes


def test_a_kubernetes_containers_command_and_args_are_its_entrypoint_and_command(tmp_path, capsys):
    k8s = write(tmp_path / "k8s", {"worker.yaml": """\
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: worker}
        spec:
          serviceName: worker
          template:
            metadata: {labels: {app: worker}}
            spec:
              containers:
                - name: worker
                  image: example/shop:1.0
                  command: ["/usr/bin/shop"]
                  args: ["worker", "--queue", "$(QUEUE)", "--token", "$(TOKEN)"]
                  env:
                    - {name: QUEUE, value: orders}
                    - name: TOKEN
                      valueFrom: {secretKeyRef: {name: shop, key: token}}
                  volumeMounts:
                    - {name: settings, mountPath: /etc/shop}
                    - {name: scratch, mountPath: /tmp}
                    - {name: cache, mountPath: /var/cache/shop}
                    - {name: data, mountPath: /var/lib/shop}
                  securityContext: {capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}}
              volumes:
                - {name: settings, configMap: {name: shop-settings}}
                - {name: scratch, emptyDir: {}}
                - {name: cache, emptyDir: {medium: Memory}}
          volumeClaimTemplates:
            - metadata: {name: data}
    """})
    fleet, notes, _ = imported(capsys, tmp_path, k8s)
    worker = fleet.services["worker"]
    assert (worker.entrypoint, worker.command) == (("/usr/bin/shop",),
                                                   ("worker", "--queue", "orders", "--token", "$(TOKEN)"))
    assert "REVIEW: `args` uses $(TOKEN): Kubernetes expands it from the container's environment, a docker " \
           "target does not" in notes
    assert "REVIEW: mounts not carried by the manifest, so the service may run differently: settings (configMap) " \
           "at /etc/shop; data (persistentVolumeClaim template) at /var/lib/shop" in notes
    # its scratch folders and its capability: the immutable container's writable folders, and a reason to keep
    assert worker.hardening.tmpfs == ("/var/cache/shop",)
    assert worker.hardening.capabilities == ("NET_BIND_SERVICE",)
    assert worker.hardening.capabilities_reason.endswith("adds them")
    assert "REVIEW: its pod gives it NET_BIND_SERVICE" in notes


# --- 14. a repository root: files that are not deploy files are skipped and listed ----------------------------


def test_a_repository_root_imports_its_manifests_and_lists_what_it_skipped(tmp_path, capsys):
    repo = write(tmp_path / "repo", {
        ".github/workflows/ci.yml": "on: push\njobs: {test: {runs-on: ubuntu-latest}}\n",
        "ci.yml": "stages: [test]\ntest: {script: [make test]}\n",
        "mkdocs.yml": "site_name: shop\n",
        "charts/shop/Chart.yaml": "apiVersion: v2\nname: shop\nversion: 0.1.0\n",
        "charts/shop/values.yaml": "replicaCount: 1\n",
        "charts/shop/templates/deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
                                                 "  name: {{ .Release.Name }}\n  labels: {{- include \"x\" . }}\n",
        "deploy/k8s/orders.yaml": workload("orders"),
    })
    fleet, notes, printed = imported(capsys, tmp_path, repo)
    assert set(fleet.services) == {"orders"}
    assert "skipped: Helm chart charts/shop/ (3 files)" in printed
    assert "Helm chart charts/shop/ (3 files): not rendered; import the output of `helm template charts/shop`" in notes
    assert "files that are neither compose files nor Kubernetes objects (2): ci.yml, mkdocs.yml" in notes


def test_a_repository_root_reports_every_syntax_error_and_suggests_the_folder_to_pass(tmp_path, capsys):
    repo = write(tmp_path / "repo", {
        "deploy/k8s/orders.yaml": workload("orders"),
        "deploy/k8s/broken.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: [x}\n",
        "config/app.yaml": "a: b: c\n",
    })
    err = failed(capsys, tmp_path, repo)
    assert "config/app.yaml:1:5: not valid YAML" in err and "deploy/k8s/broken.yaml:3:" in err
    assert "- deploy/k8s/ (Kubernetes manifests: 1 file)" in err

    write(repo, {"deploy/k8s/broken.yaml": workload("billing"), "config/app.yaml": "a: b\n",
                 "deploy/compose/compose.yaml": "services:\n  orders: {image: 'example/orders:1.0'}\n"})
    err = failed(capsys, tmp_path, repo)
    assert "holds deploy files of more than one fleet description; pass the folder (or files) of the one to " \
           "import:" in err
    assert "- deploy/compose/ (docker-compose)" in err and "- deploy/k8s/ (Kubernetes manifests: 2 files)" in err
    fleet, _, _ = imported(capsys, tmp_path, repo / "deploy" / "compose")
    assert set(fleet.services) == {"orders"}


# --- 15. a .NET Aspire application: its manifest is a third input format ---------------------------------------

TCP = {"scheme": "tcp", "protocol": "tcp", "transport": "tcp"}
HTTP = {"scheme": "http", "protocol": "tcp", "transport": "http"}
ASPIRE_MANIFEST = json.dumps({"$schema": "https://json.schemastore.org/aspire-8.0.json", "resources": {
    "cache": {
        "type": "container.v0",
        "connectionString": "{cache.bindings.tcp.host}:{cache.bindings.tcp.port}",
        "image": "docker.io/library/redis:7.4",
        "bindings": {"tcp": {**TCP, "targetPort": 6379}},
    },
    "postgres-password": {
        "type": "parameter.v0",
        "value": "{postgres-password.inputs.value}",
        "inputs": {"value": {"type": "string", "secret": True, "default": {"generate": {"minLength": 22}}}},
    },
    "postgres": {
        "type": "container.v0",
        "connectionString": "Host={postgres.bindings.tcp.host};Port={postgres.bindings.tcp.port};"
                            "Username=postgres;Password={postgres-password.value}",
        "image": "docker.io/library/postgres:17.2",
        "env": {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "{postgres-password.value}"},
        "volumes": [{"name": "shop-postgres-data", "target": "/var/lib/postgresql/data", "readOnly": False}],
        "bindings": {"tcp": {**TCP, "targetPort": 5432}},
    },
    "catalogdb": {"type": "value.v0", "connectionString": "{postgres.connectionString};Database=catalogdb"},
    "catalog-api": {
        "type": "project.v0",
        "path": "../Catalog.API/Catalog.API.csproj",
        "env": {
            "HTTP_PORTS": "{catalog-api.bindings.http.targetPort}",
            "ConnectionStrings__catalogdb": "{catalogdb.connectionString}",
            "Catalog__PageSize": "20",
        },
        "bindings": {"http": {**HTTP, "targetPort": 8080}},
    },
    "webapp": {
        "type": "project.v0",
        "path": "../WebApp/WebApp.csproj",
        "env": {
            "CatalogUrl": "{catalog-api.bindings.http.url}",
            "ConnectionStrings__cache": "{cache.connectionString}",
            "ConnectionStrings__blobs": "{storage.outputs.blobEndpoint}",
        },
        "bindings": {"http": {**HTTP, "external": True}},
    },
    "worker": {
        "type": "container.v1",
        "build": {"context": "../Worker", "dockerfile": "../Worker/Dockerfile"},
        "args": ["--queue", "orders", "--catalog", "{catalog-api.bindings.http.url}"],
    },
    "storage": {"type": "azure.bicep.v0", "path": "storage.module.bicep"},
    "frontend": {"type": "executable.v0", "command": "npm", "args": ["run", "start"], "workingDirectory": "../Web"},
}}, indent=2)


def test_an_aspire_manifest_imports_its_resources_edges_and_secrets(tmp_path, capsys):
    app = write(tmp_path / "shop", {
        "Shop.AppHost/Shop.AppHost.csproj": '<Project Sdk="Aspire.AppHost.Sdk/9.0.0"></Project>\n',
        "Shop.AppHost/aspire-manifest.json": ASPIRE_MANIFEST,
        "Catalog.API/Catalog.API.csproj": "<Project Sdk=\"Microsoft.NET.Sdk.Web\"></Project>\n",
        "Catalog.API/Dockerfile": "FROM mcr.microsoft.com/dotnet/aspnet:9.0 AS final\n",
        "WebApp/WebApp.csproj": "<Project Sdk=\"Microsoft.NET.Sdk.Web\"></Project>\n",
        "Worker/Dockerfile": "FROM python:3.12-slim\n",
    })
    fleet, notes, printed = imported(capsys, tmp_path, app / "Shop.AppHost")
    assert fleet.name == "shop"
    assert set(fleet.services) == {"cache", "postgres", "catalog-api", "webapp", "worker"}
    assert {n for n, s in fleet.services.items() if s.infrastructure} == {"cache", "postgres"}
    catalog, webapp, worker = (fleet.services[n] for n in ("catalog-api", "webapp", "worker"))
    assert (catalog.path, catalog.language, catalog.port) == ("Catalog.API", "dotnet", 8080)
    assert (worker.path, worker.build.dockerfile, worker.language) == ("Worker", "Dockerfile", "python")
    # edges: to every service a value leads to, through values and databases
    found = edges(fleet)
    assert set(found) == {("catalog-api", "postgres"), ("webapp", "catalog-api"), ("webapp", "cache"),
                          ("worker", "catalog-api")}
    assert found[("catalog-api", "postgres")].evidence == (
        "aspire-manifest.json: catalog-api: env.ConnectionStrings__catalogdb",)
    assert "ConnectionStrings__catalogdb={catalogdb.connectionString}; via catalogdb" in notes
    assert found[("worker", "catalog-api")].evidence == ("aspire-manifest.json: worker: args",)
    # values evaluated for a docker target; secrets as references; what is not known is a REVIEW note
    assert dict(catalog.env) == {"HTTP_PORTS": "8080", "Catalog__PageSize": "20"}
    assert dict(webapp.env) == {"CatalogUrl": "http://catalog-api:8080", "ConnectionStrings__cache": "cache:6379"}
    assert worker.command == ("--queue", "orders", "--catalog", "http://catalog-api:8080")
    secrets = {s: {v: r.describe() for v, r in refs.items()} for s, refs in fleet.environments["dev"].secrets.items()}
    assert secrets == {"catalog-api": {"ConnectionStrings__catalogdb": "env:CATALOG_API_CONNECTIONSTRINGS_CATALOGDB"},
                       "postgres": {"POSTGRES_PASSWORD": "env:POSTGRES_POSTGRES_PASSWORD"}}
    assert "ConnectionStrings__catalogdb (it needs the secret parameter postgres-password)" in notes
    assert "REVIEW: not written to env, since the manifest does not say their value: ConnectionStrings__blobs " \
           "({storage.outputs.blobEndpoint} is an output of storage (azure.bicep.v0)" in notes
    assert "REVIEW: WebApp.csproj has no Dockerfile beside it" in notes
    assert "REVIEW: bindings http have no targetPort" in notes
    frontend_line = ASPIRE_MANIFEST.splitlines().index('    "frontend": {') + 1
    assert f"REVIEW: frontend (aspire-manifest.json:{frontend_line}) is an executable (npm)" in notes
    assert "REVIEW: mounts not carried by the manifest, so the service may run differently: " \
           "shop-postgres-data:/var/lib/postgresql/data" in notes
    assert "storage (azure.bicep.v0): a cloud resource, provisioned outside release-graph" in notes
    assert "from 1 Aspire manifest in" in printed


def test_an_aspire_app_host_without_a_manifest_says_how_to_produce_one(tmp_path, capsys):
    app = write(tmp_path / "shop", {
        "ci.yml": "stages: [build]\n",
        "src/Shop.AppHost/Shop.AppHost.csproj": '<Project Sdk="Aspire.AppHost.Sdk/9.0.0"></Project>\n',
        "src/Shop.AppHost/appsettings.json": "{}\n",
    })
    err = failed(capsys, tmp_path, app)
    assert "src/Shop.AppHost/Shop.AppHost.csproj is a .NET Aspire AppHost" in err
    assert "`dotnet run --project src/Shop.AppHost/Shop.AppHost.csproj --publisher manifest --output-path " \
           "aspire-manifest.json`" in err
    assert "document 1 is not a Kubernetes object" not in err  # the unrelated error of old
