"""Runs the unittest tests under a folder and writes JUnit XML: `python3 -m [tests.]junit_runner DIR XML`.

The base image has no pytest, builds have no package index and each shop service is its own repository,
so every repository (and the fleet's e2e folder) carries this identical stdlib runner. Exits 1 if a test
failed or none ran. (bandit B405 warns about parsing untrusted XML: this runner only writes XML.)
"""

import sys
import time
import unittest
import xml.etree.ElementTree as ET  # nosec B405
from pathlib import Path


class TimedResult(unittest.TextTestResult):
    def startTest(self, test):
        self.seconds = getattr(self, "seconds", {})
        self.started = time.perf_counter()
        super().startTest(test)

    def stopTest(self, test):
        self.seconds[test.id()] = time.perf_counter() - self.started
        super().stopTest(test)


def main(start_dir, xml_path):
    suite = unittest.TestLoader().discover(start_dir, top_level_dir=start_dir)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=TimedResult).run(suite)
    outcomes = {}  # test id -> (JUnit element, detail); subtests and module errors were never "started"
    for kind, entries in (("failure", result.failures), ("error", result.errors), ("skipped", result.skipped),
                          ("failure", [(test, "unexpected success") for test in result.unexpectedSuccesses])):
        outcomes.update((test.id(), (kind, detail)) for test, detail in entries)
    seconds = getattr(result, "seconds", {})
    case_ids = list(seconds) + [test_id for test_id in outcomes if test_id not in seconds]
    count = {kind: str(sum(kind == outcome for outcome, _ in outcomes.values())) for kind in ("failure", "error")}
    root = ET.Element("testsuites")
    suite_el = ET.SubElement(root, "testsuite", name=start_dir, tests=str(len(case_ids)), failures=count["failure"],
                             errors=count["error"], skipped=str(len(result.skipped)),
                             time=f"{sum(seconds.values()):.3f}")
    for test_id in case_ids:
        base, _, params = test_id.partition(" ")  # subtests and setUpModule errors carry "(...)"
        classname, _, name = base.rpartition(".")
        case_el = ET.SubElement(suite_el, "testcase", classname=classname, name=f"{name} {params}".strip(),
                                time=f"{seconds.get(test_id, 0.0):.3f}")
        if test_id in outcomes:
            kind, detail = outcomes[test_id]
            ET.SubElement(case_el, kind, message=(detail.strip().splitlines() or [kind])[-1][:300]).text = detail
    Path(xml_path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(xml_path, encoding="utf-8", xml_declaration=True)
    return 0 if result.wasSuccessful() and case_ids else 1


if __name__ == "__main__":
    sys.path.insert(0, ".")  # the service's own modules (app, shopkit) live in the working directory
    sys.exit(main(sys.argv[1], sys.argv[2]))
