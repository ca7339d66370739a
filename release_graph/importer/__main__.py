"""`python -m release_graph.importer <files or folders> [-o fleet.yaml]`."""

import sys

from release_graph.importer.cli import run

raise SystemExit(run(sys.argv[1:]))
