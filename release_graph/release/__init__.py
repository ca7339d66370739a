"""The release's vocabulary and rules on top of Dagster's records: asset keys, run tags, metadata keys, errors,
what a digest must have passed to be promoted, the history of each stage and the environment matrix.

No asset definitions here: the asset modules, the sensors and the CLI all read these rules.
"""
