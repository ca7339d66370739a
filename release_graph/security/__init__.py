"""Security and compliance gates: SAST, image vulnerability scans, SBOM, Dockerfile and manifest compliance,
waivers and least privilege. Plain modules, no Dagster: the assets and checks call them.

Provenance (only a digest this fleet's image step built is promoted) reads the release history, so it is a
promotion rule: release_graph/release/promotion.py verify_provenance."""
