"""The release's history, as the instance recorded it: what each stage's records say."""

import dagster as dg

from release_graph.release import history
from release_graph.release import metadata as M

DEV = dg.AssetKey(["inventory", "dev"])
STAGING = dg.AssetKey(["inventory", "staging"])
PROD = dg.AssetKey(["inventory", "prod"])


def deployed(instance: dg.DagsterInstance, key: dg.AssetKey, digest: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={M.DIGEST: digest}))


def test_the_newest_deployment_of_many_stages_is_read_at_once_and_says_what_each_latest_says(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        deployed(instance, DEV, "sha256:" + "1" * 64)
        deployed(instance, DEV, "sha256:" + "2" * 64)
        deployed(instance, STAGING, "sha256:" + "1" * 64)
        # prod never deployed: absent, as `latest` says None
        instance.report_runless_asset_event(dg.AssetObservation(PROD, metadata={M.DIGEST: "sha256:" + "3" * 64}))

        found = history.latest_of(instance, [DEV, STAGING, PROD])

        assert set(found) == {DEV, STAGING} and history.latest(instance, PROD) is None
        for key, record in found.items():
            assert record == history.latest(instance, key)
        assert found[DEV].digest == "sha256:" + "2" * 64
        assert history.latest_of(instance, []) == {}
