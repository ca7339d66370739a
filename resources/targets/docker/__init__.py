"""The docker target, by concern: `target.py` (deploy, what runs, probe), `health.py` (asking a container
for its health), `ephemeral.py` (private networks for integration runs), `reaper.py` (teardown and orphans),
`haproxy.py` (published ports), `inspect.py` (reading what the engine reports)."""
