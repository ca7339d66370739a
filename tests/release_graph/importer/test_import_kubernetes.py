"""A team with Kubernetes manifests runs `release-graph import` on the folder and gets a fleet.yaml.

The manifests are written per story: multi-document files, nested folders, ConfigMaps, probes, init
containers that wait, Services with named target ports, and kinds that are not services.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from release_graph.fleet import load_fleet
from release_graph.importer.cli import run

SHOP = {
    "base/api.yaml": """\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: api-config, namespace: shop}
        data:
          DB_HOST: db.shop.svc.cluster.local
          FEATURE: fast
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: shop}
        spec:
          template:
            metadata: {labels: {app: api, tier: backend}}
            spec:
              initContainers:
                - name: wait-db
                  image: busybox:1.36
                  command: ["sh", "-c", "until nc -z $(DB_SERVICE) 5432; do sleep 1; done"]
                  env: [{name: DB_SERVICE, value: db}]
                - name: wait-queue
                  image: busybox:1.36
                  command: ["sh", "-c"]
                  args: ["until nslookup queue.shop.svc.cluster.local; do sleep 2; done"]
              containers:
                - name: app
                  image: registry.example.com/shop/api:1.2.0
                  ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9102}]
                  readinessProbe:
                    httpGet: {path: /ready, port: http}
                  livenessProbe:
                    httpGet: {path: /live, port: 8080}
                  envFrom:
                    - configMapRef: {name: api-config}
                      prefix: CFG_
                    - secretRef: {name: api-secrets}
                  env:
                    - {name: QUEUE_URL, value: "amqp://guest:guest@queue:5672/"}
                    - name: DB_HOST
                      valueFrom: {configMapKeyRef: {name: api-config, key: DB_HOST}}
                    - {name: DB_URL, value: "postgres://$(DB_HOST):5432/shop"}
                    - name: DB_PASSWORD
                      valueFrom: {secretKeyRef: {name: db-secret, key: password}}
                    - name: POD_NAME
                      valueFrom: {fieldRef: {fieldPath: metadata.name}}
                    - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://otel-collector.observability:4317"}
                - name: proxy
                  image: envoyproxy/envoy:v1.30
                  env: [{name: UPSTREAM, value: "localhost:8080"}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api, namespace: shop}
        spec:
          selector: {app: api}
          ports: [{port: 80, targetPort: http}]
        """,
    "base/db.yaml": """\
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: db, namespace: shop}
        spec:
          serviceName: db
          template:
            metadata: {labels: {app: db}}
            spec:
              containers:
                - name: postgres
                  image: postgres:16.3
                  readinessProbe:
                    exec: {command: [pg_isready, -U, shop]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec:
          clusterIP: None
          selector: {app: db}
          ports: [{port: 5432}]
        """,
    "base/queue.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: queue, namespace: shop}
        spec:
          template:
            metadata: {labels: {app: queue}}
            spec:
              containers:
                - name: rabbitmq
                  image: rabbitmq:3.13
                  ports: [{containerPort: 5672}]
                  livenessProbe: {tcpSocket: {port: 5672}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: queue, namespace: shop}
        spec:
          selector: {app: queue}
          ports: [{port: 5672, targetPort: 5672}]
        """,
    "observability/collector.yaml": """\
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {name: otel-collector, namespace: observability}
        spec:
          template:
            metadata: {labels: {app: otel-collector}}
            spec:
              containers:
                - name: collector
                  image: otel/opentelemetry-collector-contrib:0.100.0
                  ports: [{containerPort: 4317}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: otel-collector, namespace: observability}
        spec:
          selector: {app: otel-collector}
          ports: [{port: 4317}]
        """,
    "base/web.yml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: shop}
        spec:
          template:
            metadata: {labels: {app: web}}
            spec:
              initContainers:
                - name: wait-api
                  image: curlimages/curl:8.8.0
                  command: ["sh", "-c", "until curl -fs http://api/ready; do sleep 1; done"]
              containers:
                - name: web
                  image: registry.example.com/shop/web@sha256:%s
                  ports: [{containerPort: 3000}]
                  env:
                    - {name: API_BASE, value: "http://api.shop:80/v1"}
                    - {name: REPORTS_URL, value: "http://reports:8080"}
                    - {name: BATCH_ADDR, value: "batch:9000"}
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: web, namespace: shop}
        spec: {}
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: web, namespace: shop}
        ---
        apiVersion: monitoring.coreos.com/v1
        kind: ServiceMonitor
        metadata: {name: web, namespace: shop}
        ---
        apiVersion: batch/v1
        kind: Job
        metadata: {name: batch, namespace: shop}
        """ % ("a" * 64),
    "base/batch.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: batch, namespace: shop}
        spec:
          template:
            metadata: {labels: {app: batch}}
            spec:
              containers: [{name: batch, image: "registry.example.com/shop/batch:3"}]
        """,
    "base/kustomization.yaml": """\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        namespace: shop
        resources: [api.yaml, db.yaml, queue.yaml, missing.yaml]
        images:
          - {name: api, newTag: "2.0"}
        """,
    "README.md": "not yaml, not read\n",
}


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def comments(text: str) -> str:
    return " ".join(line.split("#", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("#"))


def import_shop(tmp_path: Path, capsys) -> tuple[Path, str]:
    write(tmp_path / "shop" / "k8s", SHOP)
    out = tmp_path / "out" / "fleet.yaml"
    code = run([str(tmp_path / "shop" / "k8s"), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, captured.out


def test_given_a_folder_of_manifests_when_imported_then_workloads_become_prebuilt_services(tmp_path, capsys):
    out, printed = import_shop(tmp_path, capsys)
    fleet = load_fleet(out)
    assert fleet.name == "shop"  # `k8s` says where manifests live, not what the fleet is called
    assert set(fleet.services) == {"api", "batch", "db", "otel-collector", "queue", "web"}
    assert {n for n, s in fleet.services.items() if s.infrastructure} == {"db", "otel-collector", "queue"}
    assert all(s.is_prebuilt for s in fleet.services.values())
    assert fleet.services["api"].image == "registry.example.com/shop/api:1.2.0"
    assert [e.target for e in fleet.environments.values()] == ["kubernetes"]
    api = fleet.services["api"]
    # the readiness probe's named port resolves to the container port; health is its path
    assert (api.port, api.health) == (8080, "/ready")
    assert (fleet.services["db"].health, fleet.services["db"].port) == (None, 5432)
    assert (fleet.services["queue"].health, fleet.services["web"].port) == (None, 3000)
    assert "services: 6 (3 application, 3 infrastructure)" in printed


def test_given_env_configmaps_and_init_containers_when_imported_then_every_edge_has_its_evidence(tmp_path, capsys):
    out, _ = import_shop(tmp_path, capsys)
    fleet = load_fleet(out)
    api = {e.name: e for e in fleet.services["api"].depends_on}
    assert set(api) == {"db", "queue", "otel-collector"}
    assert api["db"].evidence == (
        "base/api.yaml: api: env.DB_HOST",
        "base/api.yaml: api: env.DB_URL",
        "base/api.yaml: api: envFrom[api-config].DB_HOST",
        "base/api.yaml: api: initContainers[wait-db].command",  # `nc -z $(DB_SERVICE) 5432`, expanded
    )
    assert api["queue"].evidence == ("base/api.yaml: api: env.QUEUE_URL",
                                     "base/api.yaml: api: initContainers[wait-queue].command")
    assert not api["queue"].startup_only and not api["queue"].soft
    assert api["otel-collector"].soft  # telemetry: recorded, never orders deployments
    web = {e.name: e for e in fleet.services["web"].depends_on}
    assert set(web) == {"api"}
    assert web["api"].evidence == ("base/web.yml: web: env.API_BASE",
                                   "base/web.yml: web: initContainers[wait-api].command")
    env = dict(api_env := fleet.services["api"].env)
    assert env["CFG_FEATURE"] == "fast" and env["DB_URL"] == "postgres://db.shop.svc.cluster.local:5432/shop"
    assert "DB_PASSWORD" not in api_env and "POD_NAME" not in api_env and "QUEUE_URL" not in api_env

    text = comments(out.read_text())
    assert "guest:guest" not in out.read_text() and "amqp://guest:***@queue:5672/" in text
    assert "web -> reports:8080: base/web.yml: web: env.REPORTS_URL" in text  # no such Service: unresolved
    assert "web -> batch:9000: base/web.yml: web: env.BATCH_ADDR (BATCH_ADDR=batch:9000): a workload batch exists" \
           " but no Service named batch exposes it" in text
    assert "REVIEW: envFrom Secret api-secrets: secret values are never read or written: its variable names are " \
           "unknown here" in text
    assert "DB_PASSWORD (from Secret db-secret key password) from $API_DB_PASSWORD" in text
    assert {name: ref.describe() for name, ref in fleet.environments["dev"].secrets["api"].items()} == {
        "DB_PASSWORD": "env:API_DB_PASSWORD", "QUEUE_URL": "env:API_QUEUE_URL"}
    assert "POD_NAME is set by Kubernetes (fieldRef)" in text
    assert "sidecars proxy are read for edges only" in text
    assert "Service api: port 80 -> targetPort http (8080)" in text
    assert "the readinessProbe is a command: pg_isready -U shop, not an HTTP path" in text


def test_given_kinds_that_are_not_services_when_imported_then_they_are_listed_as_skipped(tmp_path, capsys):
    out, printed = import_shop(tmp_path, capsys)
    text = comments(out.read_text())
    assert "HorizontalPodAutoscaler (1): web (base/web.yml)" in text
    assert "Ingress (1): web (base/web.yml)" in text
    assert "Job (1): batch (base/web.yml)" in text
    assert "ServiceMonitor (custom resource, monitoring.coreos.com/v1) (1): web (base/web.yml)" in text
    assert "base/kustomization.yaml: a kustomization, reported and not followed: the importer reads the files it " \
           "is given; its images, namespace are not applied; it lists 4 resources; read but not listed there: " \
           "base/batch.yaml, base/web.yml; listed there but not read: missing.yaml" in text
    assert "kustomization: base/kustomization.yaml (reported, not followed)" in printed


def test_given_a_service_port_that_differs_from_the_container_port_then_the_mapping_is_explained(tmp_path, capsys):
    write(tmp_path, {"mail.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: mail}
        spec:
          template:
            metadata: {labels: {app: mail}}
            spec:
              containers: [{name: server, image: "example/mail:1", ports: [{containerPort: 8080}]}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: mail}
        spec: {selector: {app: mail}, ports: [{port: 5000, targetPort: 8080}]}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: checkout}
        spec:
          template:
            metadata: {labels: {app: checkout}}
            spec:
              containers:
                - name: server
                  image: example/checkout:1
                  env: [{name: MAIL_ADDR, value: "mail:5000"}, {name: MAIL_ADMIN, value: "mail:9999"}]
        """})
    out = tmp_path / "fleet.yaml"
    assert run([str(tmp_path / "mail.yaml"), "-o", str(out), "--fleet-name", "mailing"]) == 0
    fleet = load_fleet(out)
    assert fleet.name == "mailing" and fleet.registry == "127.0.0.1:5000/mailing"
    assert fleet.services["mail"].port == 8080
    text = comments(out.read_text())
    assert "MAIL_ADDR=mail:5000; Service mail port 5000 -> targetPort 8080" in text
    assert "MAIL_ADMIN=mail:9999; port 9999 is not a port of Service mail (ports: 5000)" in text
    assert "REVIEW: Service mail maps port 5000 to 8080: callers use mail:5000" in text


def test_given_a_list_object_and_one_name_in_two_namespaces_when_imported_then_names_stay_unique(tmp_path, capsys):
    write(tmp_path, {"all.yaml": """\
        apiVersion: v1
        kind: List
        items:
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: api, namespace: blue}
            spec:
              template:
                metadata: {labels: {app: api}}
                spec:
                  containers:
                    - {name: api, image: "example/api:1", env: [{name: PEER_URL, value: "http://api.green:80"}]}
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: api, namespace: green}
            spec:
              template:
                metadata: {labels: {app: api}}
                spec: {containers: [{name: api, image: "example/api:2"}]}
          - apiVersion: v1
            kind: Service
            metadata: {name: api, namespace: green}
            spec: {selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
          - apiVersion: v1
            kind: Secret
            metadata: {name: api-keys, namespace: blue}
            stringData: {TOKEN: do-not-read-me}
        """})
    out = tmp_path / "fleet.yaml"
    assert run([str(tmp_path / "all.yaml"), "-o", str(out)]) == 0
    fleet = load_fleet(out)
    assert set(fleet.services) == {"api-blue", "api-green"}
    assert [(e.name, e.evidence) for e in fleet.services["api-blue"].depends_on] == [
        ("api-green", ("all.yaml: api: env.PEER_URL",))]
    text = comments(out.read_text())
    assert "Deployment api (namespace blue)' is written as service 'api-blue'" in text
    assert "Secret (1): api-keys (all.yaml; its values are never read)" in text
    assert "do-not-read-me" not in out.read_text()
    capsys.readouterr()
