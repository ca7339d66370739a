"""Given a service image built on the Python base image, when its SBOM is generated, then the CycloneDX document
stored next to the run's reports lists the Python runtime (Debian's python3) and the service's own distribution,
and the summary pins the document by sha256."""

from __future__ import annotations

import hashlib
import json

import pytest

from release_graph.security import sbom

MYSERVICE_METADATA = """\
Metadata-Version: 2.1
Name: my_service
Version: 1.0
Summary: The orders service of the demo fleet
License: Apache-2.0
"""
SERVICE_DOCKERFILE = """\
FROM 127.0.0.1:5000/base/python:bookworm
COPY METADATA /opt/venv/lib/python3.11/site-packages/my_service-1.0.dist-info/METADATA
COPY app.py /app/app.py
CMD ["python3", "/app/app.py"]
"""


def test_the_base_image_sbom_lists_its_debian_packages_and_pip(docker_client, base_python, run_id, tmp_path):
    repository, digest = base_python
    summary = sbom.generate_sbom(docker_client, repository, digest, tmp_path, labels={"release-graph.test-run": run_id})
    names = {c["name"]: c["purl"] for c in json.loads(summary.path.read_text())["components"]}
    assert names["python3"].startswith("pkg:deb/debian/python3@3.11")
    assert names["ca-certificates"].startswith("pkg:deb/debian/ca-certificates@")
    assert names["pip"].startswith("pkg:pypi/pip@")
    assert "my_service" not in names


@pytest.fixture
def service_image(push_image):
    return push_image("orders-sbom", SERVICE_DOCKERFILE,
                      {"METADATA": MYSERVICE_METADATA, "app.py": "print('orders')\n"})


def test_the_service_sbom_lists_python3_and_the_services_distribution(docker_client, service_image, run_id, tmp_path):
    repository, digest = service_image
    reports = tmp_path / "reports"
    summary = sbom.generate_sbom(docker_client, repository, digest, reports,
                                 labels={"release-graph.test-run": run_id}, container_name=f"{run_id}-sbom")

    assert summary.path == reports / f"sbom-{digest.removeprefix('sha256:')[:12]}.cdx.json"
    data = summary.path.read_bytes()
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    document = json.loads(data)
    assert (document["bomFormat"], document["specVersion"], document["version"]) == ("CycloneDX", "1.5", 1)
    assert document["serialNumber"] == summary.serial_number and summary.serial_number.startswith("urn:uuid:")
    image = document["metadata"]["component"]
    assert (image["type"], image["name"], image["version"]) == ("container", repository, digest)
    assert image["purl"].startswith(f"pkg:oci/orders-sbom@sha256%3A{digest[7:]}?repository_url=")

    by_name = {c["name"]: c for c in document["components"]}
    python3 = by_name["python3"]
    assert python3["purl"].startswith("pkg:deb/debian/python3@3.11")
    assert "arch=amd64" in python3["purl"] and "distro=debian-12" in python3["purl"]
    service = by_name["my_service"]
    assert service["purl"] == "pkg:pypi/my-service@1.0"
    assert service["licenses"] == [{"license": {"name": "Apache-2.0"}}]
    location = "/opt/venv/lib/python3.11/site-packages/my_service-1.0.dist-info/METADATA"
    assert {"name": "release-graph:location", "value": location} in service["properties"]
    assert "pip" in by_name  # Debian's python3-pip ships a dist-info under /usr/lib/python3/dist-packages

    assert summary.counts["pypi"] == sum(1 for c in document["components"] if c["purl"].startswith("pkg:pypi/"))
    assert summary.counts["deb"] > 50
    assert summary.components == len(document["components"]) == summary.counts["deb"] + summary.counts["pypi"]
    assert document["dependencies"][0]["ref"] == image["bom-ref"]
    # The short-lived container that the files were read from is gone.
    assert docker_client.containers.list(all=True, filters={"name": f"{run_id}-sbom"}) == []


def test_dpkg_status_keeps_installed_packages_only_and_encodes_versions():
    status = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4
Description: GNU C Library
 continuation line

Package: removed-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: tzdata
Status: install ok installed
Architecture: all
Version: 1:2024a-0+deb12u1
"""
    packages = sbom.parse_dpkg_status(status, "debian", "12")
    assert [(p.name, p.purl) for p in packages] == [
        ("libc6", "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"),
        ("tzdata", "pkg:deb/debian/tzdata@1%3A2024a-0%2Bdeb12u1?arch=all&distro=debian-12"),
    ]


def test_a_debian_package_names_its_source_package_as_syft_does():
    status = """\
Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.20-1~deb12u2

Package: python3
Status: install ok installed
Architecture: amd64
Source: python3-defaults (3.11.2-1)
Version: 3.11.2-1+b1

Package: openssl
Status: install ok installed
Architecture: amd64
Version: 3.0.20-1~deb12u2
"""
    assert [p.purl for p in sbom.parse_dpkg_status(status, "debian", "12")] == [
        "pkg:deb/debian/libssl3@3.0.20-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl",
        # a binNMU (+b1): the source version it was rebuilt from goes with the source's name
        "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64&distro=debian-12&upstream=python3-defaults%403.11.2-1",
        "pkg:deb/debian/openssl@3.0.20-1~deb12u2?arch=amd64&distro=debian-12",
    ]


def test_a_digest_that_is_not_one_is_refused_before_anything_runs(docker_client, tmp_path):
    with pytest.raises(sbom.SbomError, match="'latest' is not a digest"):
        sbom.generate_sbom(docker_client, "127.0.0.1:5000/base/python", "latest", tmp_path)


def test_an_image_that_does_not_exist_is_a_clear_error(docker_client, registry_addr, run_id, tmp_path):
    missing = "sha256:" + "0" * 64
    with pytest.raises(sbom.SbomError, match=f"SBOM of {registry_addr}/{run_id}/nothing@{missing}"):
        sbom.generate_sbom(docker_client, f"{registry_addr}/{run_id}/nothing", missing, tmp_path)


def test_python_metadata_names_licenses_only_when_short_and_keeps_expressions_apart():
    expression = sbom.parse_python_metadata(
        "Metadata-Version: 2.4\nName: Zope.Interface\nVersion: 7.1\nLicense-Expression: ZPL-2.1 OR MIT\n", "/x")
    assert (expression.purl, expression.license, expression.license_is_expression) == (
        "pkg:pypi/zope-interface@7.1", "ZPL-2.1 OR MIT", True)
    long_text = sbom.parse_python_metadata(
        "Name: pkg\nVersion: 1\nLicense: Copyright (c) 2024\n        Permission is hereby granted...\n", "/x")
    assert long_text.license is None
    assert sbom.parse_python_metadata("Name: only-a-name\n", "/x") is None
    document = sbom.build_document("127.0.0.1:5000/shop/orders", "sha256:" + "a" * 64, [expression])
    assert document["components"][0]["licenses"] == [{"expression": "ZPL-2.1 OR MIT"}]
