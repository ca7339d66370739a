"""The one line-tracking YAML loader: the manifest reads YAML 1.1, deploy files YAML 1.2, both with lines."""

from __future__ import annotations

import pytest
import yaml

from release_graph.fleet.yaml_lines import LineDict, LineList, Yaml12LineLoader, load_all, load_single

TEXT = """\
base: &base
  image: redis
  port: 1
service:
  <<: *base
  port: 2
  port: 3
  tags: [a, b]
flags: {debug: yes, version: 1.10}
"""


def test_lines_of_keys_and_items_and_the_first_of_a_duplicate_key_is_kept():
    document, duplicates = load_single(TEXT)
    assert isinstance(document, LineDict) and document.line_of("flags") == 9
    service = document["service"]
    # a merged key may be overridden by the mapping's own; a key written twice is reported, the first kept
    assert service == {"image": "redis", "port": 2, "tags": ["a", "b"]}
    assert service.line_of("port") == 6
    assert duplicates == [("port", 7, 6)]
    assert isinstance(service["tags"], LineList) and service["tags"].line_of(1) == 8


def test_the_manifest_reads_yaml_1_1_and_deploy_files_yaml_1_2():
    document, _ = load_single(TEXT)
    assert document["flags"] == {"debug": True, "version": 1.1}
    documents, _ = load_all(TEXT + "---\nsecond: 22:22\n", Yaml12LineLoader)
    (first, first_line), (second, second_line) = documents
    assert first["flags"]["debug"] == "yes" and str(first["flags"]["version"]) == "1.10"
    assert (first_line, second_line, second) == (1, 11, {"second": "22:22"})


def test_manifest_keys_become_text_and_deploy_file_keys_must_be_plain():
    document, _ = load_single("1: one\n")
    assert document == {"1": "one"}
    with pytest.raises(yaml.YAMLError, match="a mapping key must be a plain value"):
        load_all("? [a, b]\n: x\n", Yaml12LineLoader)
