"""`release-graph`: the command line (validate, import, build, deploy, approve, status)."""
