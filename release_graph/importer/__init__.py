"""`release-graph import`: a fleet.yaml from docker-compose files or Kubernetes manifests.

Readers (`compose`, `kubernetes`) record services and the places where one names another; `edges`
turns those places into edges with evidence; `environment` decides what of a service's variables is
written as values and what as secret references; `cycles` judges soft edges and groups what still cycles;
`writer` renders deterministic, commented YAML; `cli` ties them together and writes atomically.
"""
