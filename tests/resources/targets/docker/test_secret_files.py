"""Secrets as files on the host's tmpfs, without the engine: who can read them, how they are read back, and that
nothing but our own folders is ever removed."""

import os
import stat
import time
from pathlib import Path

import pytest

from resources.containers import ContainerEngine
from resources.targets import DeploymentSpec, DockerTarget, DockerTargetConfig
from resources.targets.docker import secret_files
from resources.targets.interface import (
    InvalidDeploymentSpec,
    container_environment,
    validate_spec,
)

IMAGE = "127.0.0.1:5000/shop/api@sha256:" + "a" * 64


def spec(**overrides) -> DeploymentSpec:
    return DeploymentSpec(**{"fleet": "shop", "environment": "dev", "service": "api", "image": IMAGE, "port": 8080,
                             "env": {"LOG_LEVEL": "info"}, "secrets": {"API_KEY": "s3cr3t"}, **overrides})


def test_files_by_default_the_container_env_holds_only_where_each_file_is():
    assert container_environment(spec()) == {"LOG_LEVEL": "info", "API_KEY_FILE": "/run/secrets/API_KEY"}
    assert container_environment(spec(secrets_as="env")) == {"LOG_LEVEL": "info", "API_KEY": "s3cr3t"}
    assert container_environment(spec(secrets={})) == {"LOG_LEVEL": "info"}


def test_a_plain_variable_where_a_secret_file_is_named_and_an_unknown_delivery_are_refused():
    with pytest.raises(InvalidDeploymentSpec, match="API_KEY_FILE is set as plain env"):
        validate_spec(spec(env={"API_KEY_FILE": "/elsewhere"}))
    validate_spec(spec(env={"API_KEY_FILE": "/elsewhere"}, secrets_as="env"))  # nothing points there then
    with pytest.raises(InvalidDeploymentSpec, match="secrets_as must be one of file, env, not 'volume'"):
        validate_spec(spec(secrets_as="volume"))


def test_each_secret_is_a_file_readable_in_the_container_in_a_folder_only_the_orchestrator_enters(tmp_path):
    root = tmp_path / "secrets"
    folder, mounts = secret_files.write(root, {"API_KEY": "s3cr3t", "DB_PASSWORD": "pw"})
    assert folder.parent == root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "API_KEY").stat().st_mode) == 0o444
    assert (folder / "API_KEY").read_text() == "s3cr3t"
    assert [(m["Target"], m["Source"], m["ReadOnly"], m["Type"]) for m in mounts] == [
        ("/run/secrets/API_KEY", str(folder / "API_KEY"), True, "bind"),
        ("/run/secrets/DB_PASSWORD", str(folder / "DB_PASSWORD"), True, "bind"),
    ]
    # read back from what the engine's inspect shows (the mounts), for comparing in memory
    attrs = {"Mounts": [{"Source": m["Source"], "Destination": m["Target"]} for m in mounts]
             + [{"Source": "/var/lib/data", "Destination": "/data"}]}
    assert secret_files.read(root, attrs) == {"API_KEY": "s3cr3t", "DB_PASSWORD": "pw"}
    assert secret_files.folders_of(root, attrs) == {folder}
    (folder / "DB_PASSWORD").unlink()
    assert secret_files.read(root, attrs) is None


def test_a_removed_container_takes_its_folder_along_and_a_sweep_removes_only_our_unused_old_folders(tmp_path):
    root = tmp_path / "secrets"
    gone, _ = secret_files.write(root, {"A": "1"})
    used, used_mounts = secret_files.write(root, {"B": "2"})
    young, _ = secret_files.write(root, {"C": "3"})
    other = root / "not-ours"
    other.mkdir()
    old = time.time() - secret_files.SWEEP_GRACE_SECONDS - 5
    for path in (gone, used, other):
        os.utime(path, (old, old))

    class Container:
        attrs = {"Mounts": [{"Source": m["Source"], "Destination": m["Target"]} for m in used_mounts]}
        removed = False

        def remove(self, force):
            self.removed = force

    still_running = Container()
    removed = secret_files.sweep(root, [still_running.attrs])
    assert removed == [gone]
    assert used.is_dir() and young.is_dir() and other.is_dir()
    secret_files.remove(root, still_running)
    assert still_running.removed and not used.exists()
    secret_files.discard(root, other)  # not one of ours: kept
    secret_files.discard(root, Path("/tmp"))
    assert other.is_dir() and Path("/tmp").is_dir()


def test_a_remote_engine_is_refused_before_anything_is_written(tmp_path):
    target = DockerTarget(ContainerEngine(docker_host="tcp://10.0.0.9:2375"),
                          DockerTargetConfig(secrets_dir=str(tmp_path / "secrets")))
    with pytest.raises(Exception, match="the engine \\(tcp://10.0.0.9:2375\\) is not on it.*secrets_as: env"):
        target._secret_mounts(spec(), what="deploying api in shop/dev")
    assert not (tmp_path / "secrets").exists()
    assert target._secret_mounts(spec(secrets_as="env"), what="x") == (None, [])
