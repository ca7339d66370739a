"""Security and compliance gates: SAST, image vulnerability scans, SBOM, Dockerfile and manifest compliance,
waivers, least privilege and provenance. Plain modules, no Dagster: the assets and checks call them."""
