# Annotated sample for release-graph's semgrep rules: a `ruleid:` comment marks the next line as a finding,
# an `ok:` comment marks the next line as one that must not be reported.
import os
import pickle
import subprocess

import requests
import yaml


def run(cmd, user_code, document, blob):
    # ruleid: rg-python-subprocess-shell-true
    subprocess.run(cmd, shell=True)
    # ruleid: rg-python-subprocess-shell-true
    subprocess.check_output("ls " + cmd, shell=True, text=True)
    # ok: rg-python-subprocess-shell-true
    subprocess.run(["ls", cmd])
    # ruleid: rg-python-os-system
    os.system("rm -rf " + cmd)
    # ok: rg-python-os-system
    os.system("true")
    # ruleid: rg-python-eval-exec
    eval(user_code)
    # ruleid: rg-python-eval-exec
    exec(user_code, {})
    # ok: rg-python-eval-exec
    eval("1 + 1")
    # ruleid: rg-python-yaml-load-unsafe
    yaml.load(document)
    # ruleid: rg-python-yaml-load-unsafe
    yaml.load(document, Loader=yaml.Loader)
    # ok: rg-python-yaml-load-unsafe
    yaml.load(document, Loader=yaml.SafeLoader)
    # ok: rg-python-yaml-load-unsafe
    yaml.safe_load(document)
    # ruleid: rg-python-pickle-load
    pickle.loads(blob)
    # ok: rg-python-pickle-load
    pickle.dumps(blob)
    # ruleid: rg-python-requests-verify-false
    requests.get("https://inventory.internal/items", verify=False)
    # ok: rg-python-requests-verify-false
    requests.get("https://inventory.internal/items", timeout=5)


# ruleid: rg-python-hardcoded-password
DB_PASSWORD = "hunter2hunter2"
# ok: rg-python-hardcoded-password
DB_PASSWORD_ENV = os.environ.get("DB_PASSWORD", "")
# ok: rg-python-hardcoded-password
password = ""
# ruleid: rg-python-hardcoded-password
client = requests.Session().post("https://x.invalid", auth_token="abcd1234efgh")
