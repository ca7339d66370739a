"""Security and compliance gates: SAST, image vulnerability scans, SBOM, Dockerfile and manifest compliance,
waivers and least privilege. Plain modules, no Dagster: the assets and checks call them.

Signed provenance (`provenance.py`: an in-toto/SLSA statement per image in a DSSE envelope, ed25519) is built
and checked here; which record must carry it reads the release history, so the rule that refuses a digest is
a promotion rule: release_graph/release/promotion.py verify_provenance."""
